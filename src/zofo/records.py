"""JSON-lines files that a run appends to (log.jsonl, trajectory.jsonl) and files written whole.

A process killed mid-write can leave a torn last line: readers drop it with a warning, since every
line before it is intact and a resumed run rewrites from its checkpoint anyway. A bad line anywhere
else is an error naming the file and the line. Whole files are written atomically (write, then rename).
A finished run's JSON-lines files may be kept gzipped (NAME.jsonl.gz, as scripts/collect_runs.sh stores
them in results/: a 10,000-step run's are 1.8 MB as text); readers take either.
"""

from __future__ import annotations

import gzip
import json
import os
import warnings
from pathlib import Path

from .errors import RecordError


def stored(path: str | Path) -> Path:
    """`path`, or its gzipped copy NAME.gz where only that exists."""
    path = Path(path)
    compressed = path.with_name(path.name + ".gz")
    return compressed if not path.exists() and compressed.exists() else path


def read_records(path: str | Path) -> list[dict]:
    path = stored(path)
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        lines = data.decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError as error:
        raise RecordError(f"{path}: not UTF-8 text (byte offset {error.start})") from None
    except (gzip.BadGzipFile, EOFError) as error:
        raise RecordError(f"{path}: not a whole gzip file ({error})") from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as error:
            if number == len(lines) and not line.endswith("\n"):
                warnings.warn(f"{path}:{number}: dropped a torn last line (the writer was interrupted)", stacklevel=2)
                break
            raise RecordError(f"{path}:{number}: not a JSON object line ({error})") from None
        records.append(record)
    return records


def append_record(path: str | Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def rewrite_records(path: str | Path, records: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in records))


def write_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(text, encoding="utf-8")
    os.replace(staging, path)


def read_json(path: str | Path) -> dict:
    """A whole JSON file (metrics.json); an unreadable one names itself."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise RecordError(f"{path}: not valid JSON ({error}); the run that wrote it did not finish writing it: "
                          "rerun it (zofo train --resume with its config) or delete the folder") from None
