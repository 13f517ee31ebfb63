"""What a GPU call brings back of a sweep's runs (scripts/gpu_sweep.sh), within what a call may return: 64 MiB in
all. Finished runs (and NAME/tuning.md) always come back and count first, and the output.log of an unfinished
run that has no checkpoint (one that failed early says why there). An unfinished run with a checkpoint comes
back, the checkpoint with it, only if it fits: it then resumes on the next machine, else it starts again there,
so it is not sent at all. The unfinished runs that save the most steps per byte come first (MeZO's, which hold
no weights, before Bilevel's 17 MB).
Prints what stays behind, one path a line relative to ROOT (for tar -X), and says on stderr what that costs.
Usage: python3 scripts/return_plan.py ROOT LIST --budget-mb MB [--less-what-is-in OUT]
  ROOT: the folder the archive is made in (/tmp/zofo); LIST: a file naming the run folders returned, relative to
  ROOT, one a line (other lines, e.g. NAME/tuning.md, count as files)
"""

import argparse
import json
import os
import sys
from pathlib import Path

SKIPPED = {"adapter", "model", ".lock"}  # never returned (gpu_sweep.sh's tar excludes them)


def size(path: Path) -> int:
    """Bytes of the file, or of the files in the folder, that would be sent; a file that vanishes meanwhile (a
    checkpoint replaced by its next one) counts as nothing."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if not SKIPPED & set(p.relative_to(path).parts)
                                            and not p.name.endswith(".tmp")]
    total = 0
    for file in files:
        try:
            total += file.stat().st_size if file.is_file() else 0
        except OSError:
            pass
    return total


def last_step(run: Path) -> int:
    """The run's last logged step (0 if none): about what is lost if it starts again (its checkpoint is at its
    last evaluation, or at the step under way where it was stopped)."""
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
    """(unfinished runs that come back, unfinished runs that stay behind: all of a run with a checkpoint, all
    but the output.log of one without), within `budget` bytes with the finished runs."""
    paths = [root / name for name in returned if (root / name).exists()]
    unfinished = [p for p in paths if p.is_dir() and not (p / "metrics.json").exists()]
    resumable = [p for p in unfinished if (p / "checkpoint.pt").exists()]
    used = sum(size(p) for p in paths if p not in unfinished)
    used += sum(size(p / "output.log") for p in unfinished if p not in resumable and (p / "output.log").exists())
    kept, left = [], [p for p in unfinished if p not in resumable]
    sizes = {run: size(run) for run in resumable}
    for run in sorted(resumable, key=lambda r: last_step(r) / max(sizes[r], 1), reverse=True):
        if used + sizes[run] <= budget:
            kept.append(run)
            used += sizes[run]
        else:
            left.append(run)
    return kept, left


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("list", type=Path)
    parser.add_argument("--budget-mb", type=float, required=True, help="bytes this archive may take, in MB (1e6)")
    parser.add_argument("--less-what-is-in", type=Path, metavar="OUT",
                        help="the folder the call returns: what it holds already comes off the budget")
    args = parser.parse_args(argv)
    returned = [line.strip() for line in args.list.read_text().splitlines() if line.strip()]
    budget = int(args.budget_mb * 1e6) - (size(args.less_what_is_in) if args.less_what_is_in else 0)
    kept, left = plan(args.root, returned, max(0, budget))
    for run in left:  # a run without a checkpoint: all but its output.log
        for path in [run] if (run / "checkpoint.pt").exists() else sorted(p for p in run.iterdir() if p.name != "output.log"):
            print(path.relative_to(args.root))
    lost = [run for run in left if (run / "checkpoint.pt").exists()]
    print(f"return_plan: {len(kept)} unfinished run(s) come back with their checkpoints "
          f"({sum(map(size, kept)) / 1e6:.1f} MB); {len(lost)} stay behind ({sum(map(size, lost)) / 1e6:.1f} MB, "
          f"{sum(map(last_step, lost))} steps to run again): budget {args.budget_mb:g} MB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
