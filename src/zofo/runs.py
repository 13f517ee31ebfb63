"""The run folder: what every training run leaves behind, so that tables can be rebuilt from folders.

    config.yaml       the resolved configuration (nested sections)
    log.jsonl         one line per logged step: {"step", "train_loss", ...} or {"step", "val_loss"}
    trajectory.jsonl  the zeroth-order steps (seed, scalars, lr), where the method takes any
    checkpoint.pt     the state at the last evaluation (or checkpoint_every, or SIGTERM), for --resume (θ itself
                      comes from the trajectory);
                      deleted when the run finishes
    metrics.json      written last: zero-shot and test metrics, best step, timings; its presence means finished
    loss_curves.png   train and validation loss against step
    adapter/          the selected adapter (peft save_pretrained), where the method trains one
    model/            the selected base weights (plain transformers), where the method trains them

One process writes a folder at a time (a lock that the operating system drops when the process dies,
however it dies), and a folder that holds a run is reused only when asked: --resume continues it,
--overwrite replaces it. In a data-parallel run that process is rank 0; the other ranks hold a RunFolder
with writes=False, whose writing methods do nothing.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
from pathlib import Path

import yaml

from .config import EXECUTION_FIELDS
from .errors import RunFolderError
from .records import append_record, read_records, rewrite_records, write_atomic

LOCK = ".lock"  # held (flock) by the run writing the folder; the system drops it when that process ends


def held_by_a_run(folder: Path) -> bool:
    """Whether a live run holds the folder's lock (RunFolder takes it for as long as its process lives)."""
    if not (folder / LOCK).exists():
        return False
    with open(folder / LOCK, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock, fcntl.LOCK_UN)
    return False


OUTPUTS = ("metrics.json", "config.yaml", "log.jsonl", "trajectory.jsonl", "checkpoint.pt", "loss_curves.png",
           "adapter", "model")


class RunFolder:
    def __init__(self, folder: str | Path, writes: bool = True):
        self.folder, self.writes = Path(folder), writes
        self.log_path = self.folder / "log.jsonl"
        self.trajectory_path = self.folder / "trajectory.jsonl"
        self.checkpoint_path = self.folder / "checkpoint.pt"
        self.metrics_path = self.folder / "metrics.json"
        self._lock = None

    @property
    def finished(self) -> bool:
        return self.metrics_path.exists()

    def check(self, resume: bool, overwrite: bool) -> None:
        """Refuse at once what cannot work: a file in the way, a run already there (unless asked to reuse it)."""
        if self.folder.exists() and not self.folder.is_dir():
            raise RunFolderError(f"the run folder {self.folder} is a file: choose another --out-dir")
        if resume and self.finished:
            raise RunFolderError(f"{self.folder} holds a finished run (metrics.json): nothing to resume. "
                                 "--overwrite runs it again")
        started = self.checkpoint_path.exists() or (self.log_path.exists() and self.log_path.stat().st_size > 0)
        if not resume and not overwrite and (self.finished or started):
            state = "a finished run (metrics.json)" if self.finished else "an unfinished run"
            raise RunFolderError(f"{self.folder} already holds {state}: --resume continues an unfinished run, "
                                 "--overwrite replaces it, or choose another --out-dir")

    def open(self, config: dict, resume: bool, overwrite: bool, counts=lambda path: True) -> dict | None:
        """Lock the folder and prepare it; returns the checkpoint to resume from, if any. `counts(path)` says
        whether a field changes what this run computes (RunConfig.uses): one that does not may differ."""
        self.check(resume, overwrite)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        state = self.load_checkpoint(config, counts) if resume and self.checkpoint_path.exists() else None
        if state is None:
            if resume:
                print(f"{self.folder} has no checkpoint yet: starting the run from its first step", flush=True)
            self._clear()
            self.log_path.write_text("")
        (self.folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        return state

    def _take_lock(self) -> None:
        lock = open(self.folder / LOCK, "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            owner = lock.read().strip() or "another process"
            lock.close()
            raise RunFolderError(f"{self.folder} is being written by another zofo run ({owner}): wait for it to "
                                 "end, or choose another --out-dir") from None
        lock.truncate(0)
        lock.write(f"pid {os.getpid()}")
        lock.flush()
        self._lock = lock  # held until this process ends

    def _clear(self) -> None:
        for name in OUTPUTS:  # metrics.json first: a half-cleared folder never looks finished
            path = self.folder / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()

    # --- during the run --------------------------------------------------------------------------

    def log(self, record: dict) -> None:
        if not self.writes:
            return
        append_record(self.log_path, {k: v if not isinstance(v, float) or math.isfinite(v) else str(v)
                                      for k, v in record.items()})

    def keep_until(self, step: int) -> None:
        """Cut the log and the trajectory back to `step` (a resumed run rewrites what came after)."""
        if not self.writes:
            return
        rewrite_records(self.log_path, [r for r in read_records(self.log_path) if r["step"] <= step])
        if self.trajectory_path.exists():
            header, *records = read_records(self.trajectory_path)
            rewrite_records(self.trajectory_path, [header] + [r for r in records if r["step"] <= step])

    def save_checkpoint(self, state: dict) -> None:
        """Written after each evaluation, every checkpoint_every steps and at SIGTERM, atomically (a kill
        mid-write leaves the previous one)."""
        if not self.writes:
            return
        import torch  # here, not at the top: zofo sweep's parent reads run folders without torch

        staging = self.checkpoint_path.with_name(".checkpoint.pt.tmp")
        torch.save({**state, "config": yaml.safe_load((self.folder / "config.yaml").read_text())}, staging)
        os.replace(staging, self.checkpoint_path)

    def load_checkpoint(self, config: dict, counts=lambda path: True) -> dict:
        import torch

        try:
            # onto the CPU first, so that the file ties the run to no device (saved on cuda:1, resumed where there
            # is one GPU); the methods' load_state_dict and restore put each tensor where its parameter is
            state = torch.load(self.checkpoint_path, weights_only=True, map_location="cpu")
        except Exception as error:  # a foreign or damaged file: say which and what to do
            raise RunFolderError(f"{self.checkpoint_path} cannot be read ({error}); --overwrite starts the run again") from None
        changed = changed_fields(state["config"], config, counts)
        if changed:
            raise RunFolderError(f"{self.folder} was started with another configuration; resuming it would mix two "
                                 f"runs. Changed: {'; '.join(changed)}. Resume with the run's own settings "
                                 "(its config.yaml), or --overwrite to start this one afresh")
        return state

    def write_metrics(self, metrics: dict) -> None:
        write_atomic(self.metrics_path, json.dumps(metrics, indent=2) + "\n")

    def plot_losses(self) -> Path:
        return plot_loss_curves(read_records(self.log_path), self.folder / "loss_curves.png", title=self.folder.name)

    def finish(self, metrics: dict) -> None:
        """The loss curves, then metrics.json (its presence marks the run finished); the checkpoint goes:
        a finished run resumes no more."""
        if not self.writes:
            return
        self.plot_losses()
        self.write_metrics(metrics)
        self.checkpoint_path.unlink(missing_ok=True)


def changed_fields(old: dict, new: dict, counts=lambda path: True) -> list[str]:
    """"path: old -> new" for each field that differs between two configs and changes what a run computes: not
    EXECUTION_FIELDS, nor those `counts` rejects."""
    return [f"{path}: {a!r} -> {b!r}" for path, a, b in differences(old, new)
            if path not in EXECUTION_FIELDS and counts(path)]


def differences(old: dict, new: dict, prefix: str = ""):
    """(dotted path, old value, new value) for every field that differs between two nested configs."""
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            yield from differences(a, b, f"{prefix}{key}.")
        elif a != b:
            yield f"{prefix}{key}", a, b


def plot_loss_curves(records: list[dict], path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for key, style in (("train_loss", dict(alpha=0.35, lw=0.8)), ("val_loss", dict(marker="o", lw=1.5))):
        points = [(r["step"], float(r[key])) for r in records if key in r]
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, label=key.replace("_", " "), **style)
            if key == "train_loss" and len(values) >= 20:
                window = max(5, len(values) // 20)
                smooth = [sum(values[max(0, i - window + 1): i + 1]) / len(values[max(0, i - window + 1): i + 1])
                          for i in range(len(values))]
                ax.plot(steps, smooth, label=f"train loss ({window}-step mean)", lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
