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

A run whose folder already holds metrics.json is finished and not run again, so an interrupted
sweep resumes by running the same command.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from .config import make_config

SWEEP_KEYS = {"out_dir", "parallel", "base", "variants", "grid"}


def load_sweep(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"sweep file {path} does not exist")
    sweep = yaml.safe_load(path.read_text()) or {}
    unknown = set(sweep) - SWEEP_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown sweep key(s) {sorted(unknown)}; allowed: {sorted(SWEEP_KEYS)}")
    for key, values in (sweep.get("grid") or {}).items():
        if not isinstance(values, list):
            raise ValueError(f"{path}: grid.{key} must be a list of values, got {values!r}")
    return sweep


def expand(sweep: dict, overrides: dict | None = None) -> list[dict]:
    """Every run's config fields: base, then one variant, then one grid combination, then overrides."""
    base, variants, grid = sweep.get("base") or {}, sweep.get("variants") or [{}], sweep.get("grid") or {}
    keys = list(grid)
    runs = []
    for variant in variants:
        for values in itertools.product(*(grid[k] for k in keys)):
            fields = {**base, **variant, **dict(zip(keys, values)), **(overrides or {})}
            make_config(fields)  # a bad field or value fails here, before anything runs
            runs.append(fields)
    return runs


def run_names(runs: list[dict]) -> list[str]:
    """Name each run by the fields that differ across the sweep, e.g. task=copa,method=mezo,seed=1."""
    varying = [k for k in dict.fromkeys(k for run in runs for k in run)
               if len({repr(run.get(k)) for run in runs}) > 1]
    names = [",".join(f"{k}={run[k]}" for k in varying if k in run) or "run" for run in runs]
    if len(set(names)) != len(names):
        raise ValueError("two runs of the sweep have the same fields: remove the duplicate")
    return names


def parse_overrides(pairs: list[str]) -> dict:
    """["steps=500", "save_model=false"] -> {"steps": 500, "save_model": False} (values read as YAML)."""
    overrides = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--set takes field=value, got {pair!r}")
        key, value = pair.split("=", 1)
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def run_sweep(path: str | Path, parallel: int | None = None, dry_run: bool = False,
              overrides: dict | None = None, out_dir: str | Path | None = None) -> list[Path]:
    sweep = load_sweep(path)
    out_dir = Path(out_dir or sweep.get("out_dir") or Path("runs") / Path(path).stem)
    runs = expand(sweep, overrides)
    folders = [out_dir / name for name in run_names(runs)]
    todo = [(fields, folder) for fields, folder in zip(runs, folders) if not (folder / "metrics.json").exists()]
    print(f"{len(runs)} runs in {out_dir}: {len(runs) - len(todo)} finished, {len(todo)} to run", flush=True)
    if dry_run:
        for _, folder in todo:
            print(f"  {folder}")
        return folders
    parallel = parallel or sweep.get("parallel") or 1
    # One progress bar for the sweep, not one per run; CPU threads shared out between the runs.
    package_root = str(Path(__file__).resolve().parents[1])  # the children run this same zofo
    env = {**os.environ, "TQDM_DISABLE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // parallel)))}
    running: list[tuple[subprocess.Popen, Path]] = []
    failed = []
    with tqdm(total=len(todo), desc="sweep", unit="run") as progress:
        while todo or running:
            while todo and len(running) < parallel:
                fields, folder = todo.pop(0)
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "sweep_config.yaml").write_text(yaml.safe_dump({**fields, "out_dir": str(folder)}))
                with open(folder / "output.log", "w") as log:
                    command = [sys.executable, "-m", "zofo", "train", "--config", str(folder / "sweep_config.yaml")]
                    running.append((subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), folder))
            time.sleep(0.5)
            for process, folder in list(running):
                if process.poll() is not None:
                    running.remove((process, folder))
                    progress.update(1)
                    if process.returncode != 0:
                        failed.append(folder)
                        progress.write(f"failed ({process.returncode}): {folder} (see {folder / 'output.log'})")
    if failed:
        raise RuntimeError(f"{len(failed)} run(s) failed; rerun the sweep to retry them: {[str(f) for f in failed]}")
    return folders
