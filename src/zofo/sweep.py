"""`zofo sweep`: a grid of runs from one YAML file, several side by side, finished runs skipped.

    out_dir: runs/table1              # each run gets a folder here, named by the fields that vary
    parallel: 4                       # runs at once (one process each)
    base: {model: smollm2-135m-instruct, steps: 2000, batch_size: 16}   # fields of every run
    variants:                         # one entry per method setting; each is merged over base
      - {method: mezo, peft: none, lr: 1.0e-6}
      - {method: bilevel, peft: lora, lr: 1.0e-6, lower_lr: 1.0e-4, upper_lr: 1.0e-4}
    grid:                             # every combination of these, for every variant
      task: [sst2, copa]
      hard_prompt: [true, false]
      seed: [0, 1, 2]

Fields are named as in config files: flag names (`bilevel_lambda`), dotted paths (`bilevel.lambda`)
or nested sections. A run whose folder holds metrics.json is finished and not run again; an unfinished
one resumes from its last checkpoint; so an interrupted sweep continues by running the same command.
Each run is a child process that ends when the sweep ends, however the sweep ends.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from .config import PATHS, flatten, make_config, read_yaml
from .errors import ConfigError, ZofoError

SWEEP_KEYS = {"out_dir", "parallel", "base", "variants", "grid"}


def load_sweep(path: str | Path) -> dict:
    sweep = read_yaml(path, "sweep file") or {}
    if not isinstance(sweep, dict):
        raise ConfigError(f"{path}: a sweep file is a mapping with keys {sorted(SWEEP_KEYS)}")
    unknown = set(sweep) - SWEEP_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown sweep key(s) {sorted(unknown)}; allowed: {sorted(SWEEP_KEYS)}")
    for key, values in (sweep.get("grid") or {}).items():
        if not isinstance(values, list):
            raise ConfigError(f"{path}: grid.{key} must be a list of values, got {values!r}")
    sweep["path"] = str(path)
    return sweep


def expand(sweep: dict, overrides: dict | None = None) -> list[dict]:
    """Every run's fields as {dotted path: value}: base, then one variant, then one grid combination,
    then overrides; each run's config is validated here, before anything runs."""
    where = f"{sweep.get('path', 'sweep')}: "
    base, variants, grid = sweep.get("base") or {}, sweep.get("variants") or [{}], sweep.get("grid") or {}
    keys = list(grid)
    runs = []
    for variant in variants:
        for values in itertools.product(*(grid[k] for k in keys)):
            fields = {}
            for layer in (base, variant, dict(zip(keys, values)), overrides):
                fields.update(flatten(layer, where))
            make_config(fields, where=where)  # a bad field or value fails here
            runs.append(fields)
    return runs


def run_names(runs: list[dict]) -> list[str]:
    """Name each run by the fields that differ across the sweep, e.g. task=copa,method=mezo,seed=1."""
    varying = [k for k in dict.fromkeys(k for run in runs for k in run)
               if len({repr(run.get(k)) for run in runs}) > 1]
    names = [",".join(f"{PATHS[k]}={run[k]}" for k in varying if k in run) or "run" for run in runs]
    if len(set(names)) != len(names):
        raise ConfigError("two runs of the sweep have the same fields: remove the duplicate")
    return names


def last_step(folder: Path) -> str:
    """The last step a running child logged (read from the end of its log), for the sweep's progress line."""
    try:
        with open(folder / "log.jsonl", "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 300))
            tail = f.read().decode("utf-8", "replace").strip().splitlines()
        return tail[-1].split(",")[0].split(":")[-1].strip() if tail else "0"
    except OSError:
        return "0"


def run_sweep(path: str | Path, parallel: int | None = None, dry_run: bool = False,
              overrides: dict | None = None, out_dir: str | Path | None = None) -> list[Path]:
    sweep = load_sweep(path)
    out_dir = Path(out_dir or sweep.get("out_dir") or Path("runs") / Path(path).stem)
    runs = expand(sweep, overrides)
    folders = [out_dir / name for name in run_names(runs)]
    todo = [(fields, folder) for fields, folder in zip(runs, folders) if not (folder / "metrics.json").exists()]
    partial = sum((folder / "checkpoint.pt").exists() for _, folder in todo)
    print(f"{len(runs)} runs in {out_dir}: {len(runs) - len(todo)} finished, {len(todo)} to run "
          f"({partial} resume from a checkpoint)", flush=True)
    if dry_run:
        for _, folder in todo:
            print(f"  {folder}")
        return folders
    parallel = parallel or sweep.get("parallel") or 1
    # One progress bar for the sweep; CPU threads shared out between the runs.
    package_root = str(Path(__file__).resolve().parents[1])  # the children run this same zofo
    env = {**os.environ, "TQDM_DISABLE": "1", "ZOFO_PARENT_PID": str(os.getpid()),
           "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // parallel)))}
    running: list[tuple[subprocess.Popen, Path, int]] = []
    failed = []
    try:
        with tqdm(total=len(todo), desc="sweep", unit="run") as progress:
            while todo or running:
                while todo and len(running) < parallel:
                    fields, folder = todo.pop(0)
                    folder.mkdir(parents=True, exist_ok=True)
                    config = make_config(fields, {"out_dir": str(folder), "resume": True, "overwrite": False})
                    (folder / "sweep_config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
                    with open(folder / "output.log", "a") as log:
                        command = [sys.executable, "-m", "zofo", "train", "--config", str(folder / "sweep_config.yaml")]
                        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
                    running.append((process, folder, config.steps))
                time.sleep(0.5)
                for entry in list(running):
                    process, folder, _ = entry
                    if process.poll() is not None:
                        running.remove(entry)
                        progress.update(1)
                        if process.returncode != 0:
                            failed.append(folder)
                            progress.write(f"failed ({process.returncode}): {folder} (see {folder / 'output.log'})")
                progress.set_postfix_str("  ".join(f"{folder.name}: {last_step(folder)}/{steps}"
                                                   for _, folder, steps in running)[:200])
    finally:
        for process, _, _ in running:  # interrupted: the children stop with the sweep
            process.send_signal(signal.SIGTERM)
    if failed:
        raise ZofoError(f"{len(failed)} run(s) failed (their output.log says why); rerun the sweep to retry "
                        f"them: {', '.join(map(str, failed))}")
    return folders
