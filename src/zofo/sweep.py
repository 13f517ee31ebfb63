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
one resumes from its last checkpoint; so an interrupted sweep continues by running the same command. An
unfinished run begun with other values than the sweep now gives it (the sweep file was edited, or a tuning grid
grew and chose another value) cannot resume as this run: its folder is set aside as FOLDER.superseded-N, logs
kept, checkpoint dropped, and the run starts afresh. A finished run stays as it is; the sweep names those that ran
with values it no longer gives (fields their method does not read aside).
Each run is a child process that ends when the sweep ends, however the sweep ends.

Hyperparameters chosen on validation: a variant's `tune` lists values to choose from, and `tuning`
says how the tuning runs differ from the runs they choose for (a shortened budget):

    tuning: {steps: 500, eval_every: 250}
    variants:
      - {method: mezo, peft: none, tune: {lr: [1.0e-7, 1.0e-6, 1.0e-5]}}

For each run of such a variant, every combination of the `tune` values first runs on seed 0 with the
`tuning` fields and no test split read (`test: false`), under out_dir/tuning/; the combination of lowest
best validation loss is the one the run uses. Tuning runs go first; a run starts as soon as its own tuning
runs have finished (so a GPU freed at the end of the tuning takes a run whose choice is made, rather than
idling until the last tuning run ends); `--tuning-only` runs the tuning runs alone and leaves the runs for a later
sweep. out_dir/tuning.md records every candidate and each choice made, and each run's folder its own (tuned.yaml).

Runs shared with other sweeps: `reuse` names folders of other sweeps' runs (relative to where zofo sweep runs,
as out_dir is; a folder that does not exist yet is skipped, but one given with --reuse must exist). A run or
tuning run that is the same experiment as a finished run there (config.experiment: the same config once
resolved, but for the fields that only say how or where a run runs, on the same type of device, since a GPU
and a CPU draw different ZO directions) is copied from it instead of run again, with reused.yaml naming its
source; Table 1's MeZO runs with the hard prompt, for one, are Table 2's MeZO runs on the same tasks:

    reuse: [runs/table2-mezo-full, runs/table2-lora]
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml
from tqdm.auto import tqdm

from .config import PATHS, RunConfig, device_type_ran_on, experiment, flatten, make_config, read_yaml
from .errors import ConfigError, RunStopped, StopOnSigterm, ZofoError
from .records import read_json
from .runs import LOCK, changed_fields, held_by_a_run

SWEEP_KEYS = {"out_dir", "parallel", "base", "variants", "grid", "tuning", "reuse"}
TUNING_SEED = 0


def load_sweep(path: str | Path) -> dict:
    sweep = read_yaml(path, "sweep file") or {}
    if not isinstance(sweep, dict):
        raise ConfigError(f"{path}: a sweep file is a mapping with keys {sorted(SWEEP_KEYS)}")
    unknown = set(sweep) - SWEEP_KEYS
    if unknown:
        one_run = "" if set(sweep) & SWEEP_KEYS else f" (this looks like one run's config: `zofo train --config {path}`)"
        raise ConfigError(f"{path}: unknown sweep key(s) {sorted(unknown)}; allowed: {sorted(SWEEP_KEYS)}{one_run}")
    for key, values in (sweep.get("grid") or {}).items():
        if not isinstance(values, list):
            raise ConfigError(f"{path}: grid.{key} must be a list of values, got {values!r}")
    reuse = sweep.get("reuse") or []
    if not isinstance(reuse, list) or not all(isinstance(folder, str) for folder in reuse):
        raise ConfigError(f"{path}: reuse is a list of folders of other sweeps' runs, got {reuse!r}")
    if not isinstance(sweep.get("tuning") or {}, dict):
        raise ConfigError(f"{path}: tuning is a mapping of the fields tuning runs change (steps: 500), got {sweep['tuning']!r}")
    sweep["path"] = str(path)
    return sweep


def expand(sweep: dict, overrides: dict | None = None) -> list[dict]:
    """Every run's fields as {dotted path: value}: base, then one variant, then one grid combination,
    then overrides; each run's config is validated here, before anything runs."""
    return [fields for fields, _ in plan(sweep, overrides)]


def plan(sweep: dict, overrides: dict | None = None) -> list[tuple[dict, dict]]:
    """(fields, the values to tune: {dotted path: [values]}) for every run; every config is validated here,
    the tuning runs' included, before anything runs."""
    where = f"{sweep.get('path', 'sweep')}: "
    base, variants, grid = sweep.get("base") or {}, sweep.get("variants") or [{}], sweep.get("grid") or {}
    keys = list(grid)
    runs = []
    for variant in variants:
        variant = dict(variant)
        tune = flatten(variant.pop("tune", None), where)
        for key, values in tune.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{where}tune.{key} must be a non-empty list of values to choose from, got {values!r}")
        for values in itertools.product(*(grid[k] for k in keys)):
            fields = {}
            for layer in (base, variant, dict(zip(keys, values)), overrides):
                fields.update(flatten(layer, where))
            make_config(fields, where=where)  # a bad field or value fails here
            for candidate in candidates(tune):
                make_config(tuning_fields(fields, candidate, sweep), where=f"{where}tuning run: ")
            runs.append((fields, tune))
    return runs


def candidates(tune: dict) -> list[dict]:
    """Every combination of the values to tune, as {dotted path: value}."""
    keys = list(tune)
    return [dict(zip(keys, values)) for values in itertools.product(*(tune[k] for k in keys))] if keys else []


def tuning_fields(fields: dict, candidate: dict, sweep: dict) -> dict:
    """A tuning run: the run's fields with one candidate, the sweep's `tuning` fields, seed 0, no test split."""
    return {**fields, **flatten(sweep.get("tuning")), **candidate, "seed": TUNING_SEED, "test": False, "zero_shot": False}


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


def steps_to_run(job: Job) -> int:
    """A run's steps still to run: all of them, or those after its last logged step where it resumes from a
    checkpoint (about: a run killed without SIGTERM resumes from its last checkpoint, an evaluation or
    checkpoint_every's, before that step)."""
    steps = job.fields.get("steps", RunConfig.model_fields["steps"].default)  # validated when the sweep loaded
    done = last_step(job.folder) if (job.folder / "checkpoint.pt").exists() else "0"
    return max(0, steps - int(done)) if done.isdigit() else steps


def planned_device_type(config: RunConfig) -> str:
    """cpu or cuda: where a run of this config will run (device auto: CUDA when this machine has it)."""
    if config.device == "auto":
        import torch  # only here: a sweep's parent needs no torch otherwise

        return "cuda" if torch.cuda.is_available() else "cpu"
    return config.device.split(":")[0]


def left_by_an_attempt(folder: Path) -> list[Path]:
    """What a run's folder holds but the sweep's tuned.yaml (its choice for the run, which the report reads)."""
    return [item for item in folder.iterdir() if item.name != "tuned.yaml"] if folder.exists() else []


class Reuse:
    """The finished runs under a sweep's `reuse` folders (tuning runs included), by the experiment they ran."""

    def __init__(self, folders: list[Path]):
        self.folders = [folder for folder in folders if folder.is_dir()]
        self.runs: dict[str, Path] = {}
        for folder in self.folders:
            for metrics in sorted(folder.rglob("metrics.json")):
                run = metrics.parent
                try:
                    key = experiment(make_config(read_yaml(run / "config.yaml")), device_type_ran_on(read_json(metrics)))
                except (ZofoError, OSError, ValueError):  # another zofo version's run, or not a run: never the same
                    continue
                self.runs.setdefault(key, run)

    def find(self, fields: dict) -> Path | None:
        config = make_config(fields)
        return self.runs.get(experiment(config, planned_device_type(config)))

    def other_device_type(self, fields: dict) -> str | None:
        """cpu or cuda: the device type other than the planned one on which this experiment has finished, if any
        (planning a GPU sweep on a CPU machine: its GPU runs are copied there, not here)."""
        config = make_config(fields)
        planned = planned_device_type(config)
        return next((other for other in ("cpu", "cuda") if other != planned
                     and experiment(config, other) in self.runs), None)

    @staticmethod
    def take(source: Path, folder: Path) -> None:
        """The finished run `source` as `folder`'s run: what an unfinished attempt left there goes, but the sweep's
        own tuned.yaml (its choice, which the report reads). metrics.json, which marks a run finished, comes last,
        so that a copy cut short is a run still to do."""
        for item in left_by_an_attempt(folder):
            shutil.rmtree(item) if item.is_dir() else item.unlink()
        shutil.copytree(source, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
            "metrics.json", "tuned.yaml", "sweep_config.yaml", LOCK, "checkpoint.pt"))
        (folder / "reused.yaml").write_text(yaml.safe_dump({"reused_from": str(source)}))
        shutil.copy2(source / "metrics.json", folder / "metrics.json")


@dataclass
class Job:
    """One run of a sweep: its folder, its fields and, for a run whose values are tuned, its candidates and
    their tuning runs' folders; it is ready when those tuning runs have finished."""
    folder: Path
    fields: dict
    tuning: list[tuple[dict, Path]] = field(default_factory=list)
    _choice: dict | None = field(default=None, repr=False)

    def finished(self) -> bool:
        return (self.folder / "metrics.json").exists()

    def ready(self) -> bool:
        return all((folder / "metrics.json").exists() for _, folder in self.tuning)

    def choice(self) -> dict:
        """`choose` over its finished tuning runs, read once."""
        if self._choice is None:
            self._choice = choose(self.tuning)
        return self._choice


def run_sweep(path: str | Path, parallel: int | None = None, dry_run: bool = False,
              overrides: dict | None = None, out_dir: str | Path | None = None,
              gpus: list[str] | None = None, only: dict[str, list] | None = None,
              reuse: list[str] | None = None, tuning_only: bool = False) -> list[Path]:
    """Run the sweep's unfinished runs (those `only` selects, with the tuning runs they need), copying those that
    the `reuse` folders (the file's and these) have finished; returns the selected runs' folders. `tuning_only`
    runs the tuning runs alone (the choices are made; the runs wait for a later sweep): a share of device time
    too short for a full run can still finish runs."""
    sweep = load_sweep(path)
    out_dir = Path(out_dir or sweep.get("out_dir") or Path("runs") / Path(path).stem)
    planned = plan(sweep, overrides)
    selected = select([fields for fields, _ in planned], only or {}, path, {key for _, tune in planned for key in tune})
    folders = [out_dir / name for name in run_names([fields for fields, _ in planned])]
    parallel = sweep.get("parallel", 1) if parallel is None else parallel
    if not isinstance(parallel, int) or isinstance(parallel, bool) or parallel < 1:
        raise ConfigError(f"{path}: parallel (runs at once, from --parallel or the file) must be a whole number "
                          f"of at least 1, got {parallel!r}")
    missing = [folder for folder in reuse or [] if not Path(folder).is_dir()]  # named here, not in the file: a typo
    if missing:
        raise ConfigError(f"--reuse: no such folder: {', '.join(missing)}")
    reuse = Reuse([Path(folder) for folder in [*(sweep.get("reuse") or []), *(reuse or [])]])
    tuning = tuning_folders(sweep, planned, out_dir)  # per run: [(candidate, its tuning run's folder)]
    runs = [Job(folder, fields, candidates) for (fields, _), candidates, folder in zip(planned, tuning, folders)]
    chosen_runs = [job for job, keep in zip(runs, selected) if keep]
    tuning_jobs = list({folder: Job(folder, tuning_fields(job.fields, candidate, sweep))
                        for job in chosen_runs for candidate, folder in job.tuning}.values())
    if tuning_only and not tuning_jobs:
        raise ConfigError(f"--tuning-only: no run of {path} that is selected has tuning runs (a variant's `tune`)")
    copied = announce(tuning_jobs, f"tuning runs in {out_dir / 'tuning'}", dry_run, reuse) if tuning_jobs else {}
    tuned = all(job.ready() for job in chosen_runs)
    announce(chosen_runs, f"runs in {out_dir}" + (f" (of {len(runs)}, selected by --only)" if only else ""),
             dry_run and tuned, reuse, copied)
    if tuning_only:
        print(f"--tuning-only: the runs in {out_dir} wait for a sweep without it")
    if dry_run:
        if not tuned and not tuning_only:
            print(f"then the {len(chosen_runs)} runs in {out_dir}, with the values their tuning runs choose "
                  "(each as soon as its own tuning runs have finished)")
        return [job.folder for job in chosen_runs]

    def with_tuned_values(job: Job) -> dict:
        if not job.tuning:
            return job.fields
        choice = job.choice()
        job.folder.mkdir(parents=True, exist_ok=True)
        (job.folder / "tuned.yaml").write_text(yaml.safe_dump(choice, sort_keys=False))  # the report reads it
        write_tuning_notes(out_dir, runs)
        return {**job.fields, **choice["chosen"]}

    try:
        run_jobs(tuning_jobs + ([] if tuning_only else chosen_runs), parallel, gpus, with_tuned_values, reuse)
    finally:
        if tuning_jobs:
            write_tuning_notes(out_dir, runs)  # every run's choice made so far, selected or not
    return [job.folder for job in chosen_runs]


def select(runs: list[dict], only: dict[str, list], path: str | Path, tuned: set[str] = frozenset()) -> list[bool]:
    """Which runs `only` ({dotted path: allowed values}, from --only) keeps: those whose every named field
    has one of its values. A field no run sets, or a value no run has, is an error (a typo would otherwise
    run nothing)."""
    for key, allowed in only.items():
        present = list(dict.fromkeys(str(run[key]) for run in runs if key in run))
        if not present:
            chosen = " (tuning runs choose it for each run)" if key in tuned else ""
            raise ConfigError(f"--only {PATHS[key]}: no run of {path} sets {PATHS[key]}{chosen}")
        missing = [value for value in allowed if not any(key in run and run[key] == value for run in runs)]
        if missing:
            raise ConfigError(f"--only {PATHS[key]}: no run of {path} has {PATHS[key]} = "
                              f"{', '.join(map(str, missing))}; its values: {', '.join(present)}")
    return [all(key in run and run[key] in allowed for key, allowed in only.items()) for run in runs]


def known_fields(job: Job, copied: dict[Path, Path]) -> dict | None:
    """The fields a job will run with, if known yet: a tuned run's once its tuning runs have finished or are
    to be copied from finished ones (`copied`: folder -> source)."""
    if not job.tuning:
        return job.fields
    runs = [(candidate, folder if (folder / "metrics.json").exists() else copied.get(folder))
            for candidate, folder in job.tuning]
    if any(folder is None for _, folder in runs):
        return None
    try:
        return {**job.fields, **choose(runs)["chosen"]}
    except ZofoError:  # every tuning run diverged: it will not run
        return None


def announce(jobs: list[Job], what: str, listing: bool, reuse: Reuse,
             copied: dict[Path, Path] | None = None) -> dict[Path, Path]:
    """How many of these runs are finished, how many are to run and how many of those another sweep has run
    (listed when `listing`); returns those: folder -> the finished run it is copied from. A run whose values
    its tuning runs have yet to choose is not known to be reusable (`copied`: the tuning runs to be copied)."""
    todo = [job for job in jobs if not job.finished()]
    partial = sum((job.folder / "checkpoint.pt").exists() for job in todo)
    known = {job.folder: fields for job in todo if (fields := known_fields(job, copied or {})) is not None}
    sources = {folder: source for folder, fields in known.items() if (source := reuse.find(fields))}
    reused = f", {len(sources)} of them copied from {', '.join(map(str, reuse.folders))}" if reuse.folders else ""
    left = sum(steps_to_run(job) for job in todo if job.folder not in sources)
    print(f"{len(jobs)} {what}: {len(jobs) - len(todo)} finished, {len(todo)} to run "
          f"({partial} resume from a checkpoint{reused})" + (f": about {left:,} steps to run" if todo else ""), flush=True)
    elsewhere = Counter(other for folder, fields in known.items()
                        if folder not in sources and (other := reuse.other_device_type(fields)))
    for device_type, count in sorted(elsewhere.items()):
        print(f"  {count} more of them have finished on {device_type}, which draws other ZO directions, so they "
              f"are not copied to run here; --set device={device_type} plans the sweep for {device_type}", flush=True)
    # a finished run is never run again, even when the sweep now gives it other values (an edit, a grown grid)
    stale = [(job.folder, changed) for job in jobs if job.finished() and (job.folder / "config.yaml").exists()
             and (fields := known_fields(job, copied or {})) is not None
             and (changed := changed_values(job.folder, fields, read_by_the_method=True))]
    if stale:
        folder, changed = stale[0]
        print(f"  {len(stale)} of the finished ran with other values than the sweep now gives them ({folder}: "
              f"{'; '.join(changed)}{'; and others' if len(stale) > 1 else ''}): they stay as they are; delete a "
              "run's folder to run it again", flush=True)
    if listing:
        for job in todo:
            source = sources.get(job.folder)
            print(f"  {job.folder}" + (f" (copied from {source})" if source else ""))
    return sources


def tuning_folders(sweep: dict, planned: list[tuple[dict, dict]], out_dir: Path) -> list[list[tuple[dict, Path]]]:
    """For each run, its candidates and the folder of each one's tuning run; runs that differ only in
    the seed share their tuning runs."""
    per_run = [[(candidate, tuning_fields(fields, candidate, sweep)) for candidate in candidates(tune)]
               for fields, tune in planned]
    same = lambda fields: repr(sorted(fields.items()))
    unique = {same(fields): fields for runs in per_run for _, fields in runs}
    names = dict(zip(unique, run_names(list(unique.values())))) if unique else {}
    return [[(candidate, out_dir / "tuning" / names[same(fields)]) for candidate, fields in runs] for runs in per_run]


def choose(runs: list[tuple[dict, Path]]) -> dict:
    """The candidate whose tuning run reached the lowest validation loss (a diverged one never is chosen)."""
    if not runs:
        return {"chosen": {}, "tied": [], "candidates": []}
    results = []
    for candidate, folder in runs:
        metrics = read_json(folder / "metrics.json")
        results.append({"values": candidate, "best_val_loss": metrics.get("best_val_loss"),
                        "best_step": metrics.get("best_step"), "diverged": metrics.get("diverged"),
                        "ended_early": metrics.get("ended_early"), "folder": str(folder)})
    finite = [r for r in results if r["best_val_loss"] is not None]
    if not finite:
        raise ZofoError(f"every tuning run diverged ({', '.join(r['folder'] for r in results)}): add smaller values "
                        "to the variant's tune list")
    best = min(finite, key=lambda r: r["best_val_loss"])
    # candidates whose runs reached the very same loss (e.g. every one's best step came before its value acted):
    # validation cannot tell them apart, and the first listed is taken; tuning.md says so
    tied = [r["values"] for r in finite if r is not best and r["best_val_loss"] == best["best_val_loss"]]
    return {"chosen": best["values"], "tied": tied, "candidates": results}


def listed(values: dict) -> str:
    return ", ".join(f"{PATHS[k]}={v}" for k, v in values.items())


def choice_line(choice: dict) -> str:
    """The chosen values, and the candidates tied with them, if any."""
    line = f"**{listed(choice['chosen'])}**"
    if choice["tied"]:
        line += (f" (tied with {'; '.join(map(listed, choice['tied']))}: the same validation loss, which cannot "
                 "tell them apart; the first listed is taken)")
    return line


def write_tuning_notes(out_dir: Path, runs: list[Job]) -> None:
    """tuning.md: each run's candidates and choice, for the runs whose tuning runs have all finished."""
    lines = ["Values chosen on validation (lowest best validation loss of a shortened run on seed "
             f"{TUNING_SEED}; no test split read by a tuning run).", ""]
    for job in runs:
        if not job.tuning or not job.ready():
            continue
        try:
            choice = job.choice()
        except ZofoError as error:
            lines.append(f"- {job.folder.name}: none chosen ({error})")
            continue
        lines.append(f"- {job.folder.name}: {choice_line(choice)}")
        for result in choice["candidates"]:
            values = listed(result["values"])
            outcome = (f"diverged ({result['diverged'].split(':')[0]})" if result["diverged"]  # where, and how
                       else f"val loss {result['best_val_loss']:.4f} at step {result['best_step']}")
            if result["ended_early"]:  # far off (loop.EXPLODED)
                end = result["ended_early"]
                outcome += (f"; ended at step {end['step']}, its validation loss {end['val_loss']:.4g} far over a "
                            f"uniform guess's {end['uniform_guess_loss']:.4f}")
            lines.append(f"    - {values}: {outcome}")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tuning.md").write_text("\n".join(lines) + "\n")


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (its entries, else 0 .. count − 1)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [gpu.strip() for gpu in listed.split(",") if gpu.strip()]
    import torch  # only here: a sweep's parent needs no torch otherwise

    return [str(i) for i in range(torch.cuda.device_count())]


def least_busy(gpus: list[str], running: list[str]) -> str:
    """The GPU running the fewest of the sweep's runs (the first such in `gpus`)."""
    return min(gpus, key=running.count)


def run_jobs(jobs: list[Job], parallel: int, gpus: list[str] | None = None,
             fields_of: Callable[[Job], dict] = lambda job: job.fields, reuse: Reuse | None = None) -> None:
    """Run each unfinished job as a child `zofo train`, `parallel` at a time, in order but those with a checkpoint
    first (they end soonest, and a GPU lease then seldom ends with a carried run not yet begun, whose checkpoint,
    15 MB for Bilevel-LoRA, would come back unchanged), each as soon as it is ready (`fields_of` gives the fields it
    runs with); partial ones resume; one that `reuse` has finished
    elsewhere is copied from there instead. Each child sees one of the `gpus`
    (CUDA_VISIBLE_DEVICES), the one running the fewest runs, so `parallel` runs share the GPUs evenly;
    without GPUs the children's environment is ours."""
    todo = [job for job in jobs if not job.finished()]
    todo.sort(key=lambda job: not (job.folder / "checkpoint.pt").exists())  # stable: the plan's order otherwise
    # One progress bar for the sweep; CPU threads shared out between the runs.
    package_root = str(Path(__file__).resolve().parents[1])  # the children run this same zofo
    env = {**os.environ, "TQDM_DISABLE": "1", "ZOFO_PARENT_PID": str(os.getpid()),
           "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // parallel)))}
    gpus = gpus if gpus is not None else visible_gpus()
    if len(gpus) > 1:
        print(f"spread over GPUs {', '.join(gpus)}", flush=True)
    running: list[tuple[subprocess.Popen, Path, int, str | None]] = []
    failed = []
    stop = StopOnSigterm(enabled=True)
    try:
        with tqdm(total=len(todo), desc="sweep", unit="run") as progress:
            while todo or running:
                if stop.requested:  # its runs checkpoint (below); the caller notes the tuning choices made
                    raise RunStopped(f"stopped at SIGTERM with {len(running)} run(s) under way, each checkpointing "
                                     "its step; the same command resumes them")
                while len(running) < parallel and (job := next((job for job in todo if job.ready()), None)):
                    todo.remove(job)
                    try:
                        fields = fields_of(job)
                    except ZofoError as error:  # every tuning run of this one diverged
                        failed.append(f"{job.folder} (not run: {error})")
                        progress.update(1)
                        continue
                    if reuse and (source := reuse.find(fields)) and not held_by_a_run(job.folder):
                        Reuse.take(source, job.folder)
                        progress.write(f"copied, the same experiment: {source} -> {job.folder}")
                        progress.update(1)
                        continue
                    if superseded := set_aside_if_begun_otherwise(job.folder, fields):
                        changed, aside = superseded
                        progress.write(f"started again: {job.folder} had begun with other values ({changed}); "
                                       f"what it ran is kept in {aside}")
                    running.append(start_run(job.folder, fields, gpus, env, [entry[3] for entry in running]))
                if not running:
                    break  # what is left waits for tuning runs that failed
                time.sleep(0.5)
                for entry in list(running):
                    process, folder = entry[:2]
                    if process.poll() is not None:
                        running.remove(entry)
                        progress.update(1)
                        if process.returncode != 0:
                            failed.append(f"{folder} (exit {process.returncode}: see its output.log)")
                            progress.write(f"failed ({process.returncode}): {folder} (see {folder / 'output.log'})")
                progress.set_postfix_str("  ".join(f"{folder.name}: {last_step(folder)}/{steps}"
                                                   for _, folder, steps, _ in running)[:200])
    finally:
        stop.restore()
        for process, *_ in running:  # interrupted: the children stop with the sweep
            process.send_signal(signal.SIGTERM)
    if failed:
        waiting = f"; {len(todo)} run(s) wait for the failed tuning runs" if todo else ""
        raise ZofoError(f"{len(failed)} run(s) did not finish{waiting}; rerun the sweep to retry them: "
                        + "; ".join(failed))


def changed_values(folder: Path, fields: dict, read_by_the_method: bool = False) -> list[str]:
    """What differs between the run in `folder` (its config.yaml) and `fields`, but for EXECUTION_FIELDS (and,
    if `read_by_the_method`, fields its method ignores): ["lr: 1e-05 -> 0.0001", ...]; [] for a folder whose
    config this zofo cannot read (another version's)."""
    try:
        old = make_config(read_yaml(folder / "config.yaml")).to_dict()
    except (ZofoError, OSError, ValueError):
        return []
    new = make_config(fields)
    return changed_fields(old, new.to_dict(), new.uses if read_by_the_method else lambda path: True)


def set_aside_if_begun_otherwise(folder: Path, fields: dict) -> tuple[str, Path] | None:
    """An unfinished run in `folder` whose config differs from `fields` (but for EXECUTION_FIELDS) moves to
    FOLDER.superseded-N without its checkpoint, which this sweep would never resume, leaving the sweep's tuned.yaml
    (the choice `fields` hold, just written) where it is: (what differs, where the run went)."""
    if not (folder / "config.yaml").exists() or (folder / "metrics.json").exists() or held_by_a_run(folder):
        return None
    changed = changed_values(folder, fields)
    if not changed:
        return None
    aside = next(place for n in itertools.count(1) if not (place := folder.with_name(f"{folder.name}.superseded-{n}")).exists())
    aside.mkdir()
    for item in left_by_an_attempt(folder):
        item.rename(aside / item.name)
    (aside / "checkpoint.pt").unlink(missing_ok=True)
    return "; ".join(changed), aside


def start_run(folder: Path, fields: dict, gpus: list[str], env: dict, busy: list[str | None]):
    """Start one run as a child process, on the least busy of `gpus`; returns (process, folder, steps, GPU)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = make_config(fields, {"out_dir": str(folder), "resume": True, "overwrite": False})
    (folder / "sweep_config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    # a run that names its GPU (device cuda:N) keeps the sweep's view of the GPUs
    spread = gpus and not config.device.startswith("cuda:")
    gpu = least_busy(gpus, busy) if spread else None
    child_env = env if gpu is None else {**env, "CUDA_VISIBLE_DEVICES": gpu}
    # the run's progress bars go to its output.log: redrawn every 30 s, not every 0.1 s (a 10,000-step run
    # wrote 0.8 MB of bars); tqdm reads TQDM_* variables as its defaults
    child_env = {"TQDM_MININTERVAL": "30", **child_env}
    with open(folder / "output.log", "a") as log:
        command = [sys.executable, "-m", "zofo", "train", "--config", str(folder / "sweep_config.yaml")]
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=child_env)
    return process, folder, config.steps, gpu
