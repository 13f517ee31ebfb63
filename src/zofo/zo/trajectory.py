"""The trajectory: every ZO step as (step, seed, scalars, lr), one JSON line each.

With the base model, this log alone rebuilds the fine-tuned weights: replaying a step makes the
same passes over θ as training did (the forwards are not needed, only their scalars), so in fp32 on
the same device the rebuilt weights are bit-identical. A fine-tuned model can be shared as its log.
"""

from __future__ import annotations

import json
from pathlib import Path

from .optimizers import ZOOptimizer
from .spsa import SPSA, Estimate


class Trajectory:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def start(self, keep_until: int = 0) -> None:
        """Begin writing; a resumed run keeps the steps up to its checkpoint and drops the rest."""
        kept = [r for r in self.read() if r["step"] <= keep_until] if keep_until else []
        with self.path.open("w") as f:
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
        return [r for r in records if until is None or r["step"] <= until]


def replay(trajectory: Trajectory, spsa: SPSA, optimizer: ZOOptimizer, until: int | None = None) -> int:
    """Apply the logged steps (up to `until`) to θ; returns the last step replayed."""
    last = 0
    for record in trajectory.read(until):
        optimizer.lr = record["lr"]
        optimizer.step(spsa.replay(record["seed"], record["scalars"]))
        last = record["step"]
    return last
