"""The trajectory: every ZO step as (step, seed, scalars, lr), one JSON line each.

With the start point (the base model, a seeded adapter), this log alone rebuilds the fine-tuned
weights: replaying a step makes the same passes over θ as training did (only the forwards' scalars are
needed), so in fp32 on the same device type the rebuilt weights are bit-identical. Directions depend on
(seed, parameter name, element index) only, so the log replays onto any packing of the same parameters,
for example θ of a Bilevel run onto the plain model without its adapters.
"""

from __future__ import annotations

from pathlib import Path

from ..records import RecordError, append_record, read_records, rewrite_records, stored
from .optimizers import ZOOptimizer
from .spsa import SPSA

FORMAT = 2  # 1: zofo 0.1, whose directions depended on the memory layout (buckets, chunks, dtype groups)
FIELDS = ("step", "seed", "scalars", "lr")


class Trajectory:
    """The log at `path`. With writes=False (a data-parallel run's ranks other than 0, which take the same
    steps) it is only read: start, keep_until and append do nothing."""

    def __init__(self, path: str | Path, writes: bool = True):
        self.path, self.writes = Path(path), writes

    def start(self, directions: str) -> None:
        """Begin a new log, its first line naming the direction generator."""
        if not self.writes:
            return
        rewrite_records(self.path, [{"format": FORMAT, "directions": directions}])

    def keep_until(self, step: int) -> None:
        """Drop the steps after `step` (a resumed run continues from its checkpoint)."""
        if not self.writes:
            return
        header, *records = read_records(self.path)
        rewrite_records(self.path, [header] + [r for r in records if r["step"] <= step])

    def append(self, step: int, seed: int, scalars: list[float], lr: float) -> None:
        if not self.writes:
            return
        append_record(self.path, {"step": step, "seed": seed, "scalars": scalars, "lr": lr})

    def header(self) -> dict:
        if not stored(self.path).exists():
            raise FileNotFoundError(f"{self.path} does not exist: only runs with zeroth-order steps have a trajectory")
        records = read_records(self.path)
        if not records or "directions" not in records[0]:
            raise RecordError(f"{self.path}:1: the first line must name the direction generator")
        return records[0]

    def read(self, until: int | None = None) -> list[dict]:
        records = read_records(self.path)[1:]
        for number, record in enumerate(records, start=2):
            missing = [f for f in FIELDS if f not in record]
            if missing:
                raise RecordError(f"{self.path}:{number}: trajectory record lacks {', '.join(missing)}")
        return [r for r in records if until is None or r["step"] <= until]

    def check(self, directions: str) -> None:
        """Refuse to replay under another direction generator: the weights would silently differ."""
        header = self.header()
        if header.get("format") != FORMAT:
            raise RecordError(f"{self.path} was written by zofo 0.1, whose random directions depended on how the "
                              "parameters were packed in memory; this version cannot rebuild its weights. Train the "
                              "run again (or replay it with zofo 0.1).")
        if header["directions"] != directions:
            raise RecordError(f"{self.path} was written with directions {header['directions']!r}, but this machine "
                              f"draws them as {directions!r}: replay on the device type that trained it (e.g. "
                              "--device cuda for a GPU run) and with the same parameters")


def replay(trajectory: Trajectory, spsa: SPSA, optimizer: ZOOptimizer, until: int | None = None) -> int:
    """Apply the logged steps (up to `until`) to θ; returns the last step replayed."""
    trajectory.check(spsa.space.directions)
    last = 0
    for record in trajectory.read(until):
        optimizer.lr = record["lr"]
        optimizer.step(spsa.replay(record["seed"], record["scalars"]))
        last = record["step"]
    return last
