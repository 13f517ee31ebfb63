"""Which unfinished runs' checkpoints a GPU call brings back (scripts/gpu_sweep.sh), within what a call may return:
64 MiB in all. A run that comes back without its checkpoint starts again from its first step on the next machine,
so the checkpoints that save the most steps per byte come first (MeZO's, which hold no weights, before Bilevel's
17 MB). Everything else of the returned runs (logs, metrics, trajectories) always comes back and counts first.
Prints the checkpoints left behind, one path a line relative to ROOT (for tar -X), and says on stderr what
they cost.
Usage: python3 scripts/return_plan.py ROOT LIST --budget-mb MB
  ROOT: the folder the archive is made in (/tmp/zofo); LIST: a file naming the run folders returned, relative to
  ROOT, one a line (other lines, e.g. NAME/tuning.md, count as files)
"""

import argparse
import json
import os
import sys
from pathlib import Path

SKIPPED = {"adapter", "model", ".lock"}  # never returned (gpu_sweep.sh's tar excludes them)


def files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return [p for p in path.rglob("*") if p.is_file() and not SKIPPED & set(p.relative_to(path).parts)]


def last_step(run: Path) -> int:
    """The run's last logged step (0 if none): what is lost if it starts again."""
    try:
        with open(run / "log.jsonl", "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 2000))
            lines = f.read().decode("utf-8", "replace").strip().splitlines()
        for line in reversed(lines):
            try:
                return int(json.loads(line)["step"])
            except (ValueError, KeyError, TypeError):
                continue
    except OSError:
        pass
    return 0


def plan(root: Path, returned: list[str], budget: int) -> tuple[list[Path], list[Path]]:
    """(checkpoints returned, checkpoints left), the first within `budget` bytes with everything else."""
    paths = [root / name for name in returned if (root / name).exists()]
    checkpoints = [p for path in paths for p in files(path) if p.name == "checkpoint.pt"]
    used = sum(p.stat().st_size for path in paths for p in files(path) if p.name != "checkpoint.pt")
    kept, left = [], []
    for checkpoint in sorted(checkpoints, key=lambda c: last_step(c.parent) / c.stat().st_size, reverse=True):
        size = checkpoint.stat().st_size
        if used + size <= budget:
            kept.append(checkpoint)
            used += size
        else:
            left.append(checkpoint)
    return kept, left


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("list", type=Path)
    parser.add_argument("--budget-mb", type=float, required=True, help="bytes this archive may take, in MB (1e6)")
    args = parser.parse_args(argv)
    returned = [line.strip() for line in args.list.read_text().splitlines() if line.strip()]
    kept, left = plan(args.root, returned, int(args.budget_mb * 1e6))
    for checkpoint in left:
        print(checkpoint.relative_to(args.root))
    steps = sum(last_step(c.parent) for c in left)
    print(f"return_plan: {len(kept)} checkpoint(s) come back ({sum(c.stat().st_size for c in kept) / 1e6:.1f} MB); "
          f"{len(left)} stay behind ({sum(c.stat().st_size for c in left) / 1e6:.1f} MB, {steps} steps to run "
          f"again): budget {args.budget_mb:g} MB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
