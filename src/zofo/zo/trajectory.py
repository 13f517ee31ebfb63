"""The trajectory: every ZO step as (step, seed, scalars, lr), one JSON line each.

With the base model, this log alone rebuilds the fine-tuned weights: replaying a step makes the
same passes over θ as training did (the forwards are not needed, only their scalars), so in fp32 on
the same device the rebuilt weights are bit-identical. A fine-tuned model can be shared as its log.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from .optimizers import ZOOptimizer
from .spsa import SPSA, Estimate


class Trajectory:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def start(self, directions: str, keep_until: int = 0) -> None:
        """Begin writing, the first line naming the direction generator (ParameterSpace.directions);
        a resumed run keeps the steps up to its checkpoint and drops the rest."""
        kept = [r for r in self.read() if r["step"] <= keep_until] if keep_until else []
        with self.path.open("w") as f:
            f.write(json.dumps({"directions": directions}) + "\n")
            for record in kept:
                f.write(json.dumps(record) + "\n")

    def append(self, step: int, seed: int, estimate: Estimate, lr: float) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, "seed": seed, "scalars": estimate.scalars, "lr": lr}) + "\n")

    def read(self, until: int | None = None) -> list[dict]:
        if not self.path.exists():
            return []
        with self.path.open() as f:
            records = [json.loads(line) for line in f if line.strip()]
        return [r for r in records if "step" in r and (until is None or r["step"] <= until)]

    def check(self, directions: str) -> None:
        """Refuse to replay under another direction generator: the weights would silently differ."""
        with self.path.open() as f:
            first = json.loads(f.readline() or "{}")
        if "directions" not in first:
            warnings.warn(f"{self.path} does not name its direction generator (written by an older zofo); "
                          f"replaying with {directions}", stacklevel=2)
        elif first["directions"] != directions:
            raise ValueError(f"{self.path} was written with directions from {first['directions']}, but this "
                             f"machine draws them from {directions}: replay on the device (and zofo version) "
                             "that trained it, e.g. --device cuda for a GPU run")


def replay(trajectory: Trajectory, spsa: SPSA, optimizer: ZOOptimizer, until: int | None = None) -> int:
    """Apply the logged steps (up to `until`) to θ; returns the last step replayed."""
    trajectory.check(spsa.space.directions)
    last = 0
    for record in trajectory.read(until):
        optimizer.lr = record["lr"]
        optimizer.step(spsa.replay(record["seed"], record["scalars"]))
        last = record["step"]
    return last
