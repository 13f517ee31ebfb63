"""The run folder: what every training run leaves behind, so that tables can be rebuilt from folders.

    config.yaml     the resolved configuration
    log.jsonl       one line per logged step: {"step", "train_loss"} or {"step", "val_loss"}
    metrics.json    zero-shot and final test metrics, best step, timings, data sampling metadata
    loss_curves.png train and validation loss against step
    adapter/        the selected adapter (peft save_pretrained), where the method trains one
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml


class Run:
    def __init__(self, folder: str | Path, config: dict):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = self.folder / "log.jsonl"
        self.checkpoint_path = self.folder / "checkpoint.json"
        self.checkpoint: dict | None = None  # set when the run resumes
        self.log_path.write_text("")

    @classmethod
    def resume(cls, folder: str | Path, config: dict) -> "Run":
        """Reopen a run folder at its last checkpoint: the log keeps the steps up to it."""
        folder = Path(folder)
        checkpoint_path = folder / "checkpoint.json"
        if not checkpoint_path.exists():
            raise FileNotFoundError(f"{checkpoint_path} does not exist: nothing to resume (drop --resume to start afresh)")
        checkpoint = json.loads(checkpoint_path.read_text())
        kept = [r for r in read_log(folder / "log.jsonl") if r["step"] <= checkpoint["step"]]
        run = cls(folder, config)
        for record in kept:
            run.log(**record)
        run.checkpoint = checkpoint
        return run

    def save_checkpoint(self, **state) -> None:
        """Written after each evaluation; a resumed run restarts from here. Atomic (rename)."""
        staging = self.checkpoint_path.with_suffix(".tmp")
        staging.write_text(json.dumps(state))
        staging.replace(self.checkpoint_path)

    def log(self, **record) -> None:
        for key, value in record.items():
            if isinstance(value, float) and not math.isfinite(value):
                record[key] = str(value)
        with self.log_path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def write_metrics(self, metrics: dict) -> None:
        (self.folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")

    def plot_losses(self) -> Path:
        return plot_loss_curves(read_log(self.log_path), self.folder / "loss_curves.png", title=self.folder.name)


def read_log(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


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
