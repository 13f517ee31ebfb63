"""Shared pieces of the task loaders: records, examples, file reading and sampling.

A *record* is one scored example in the dataset's own field names (a dict).
A :class:`Task` knows where its official splits live (files under a data folder,
or the Hugging Face Hub) and how to turn a record into an :class:`Example`
(one ``(context, continuation)`` pair per candidate answer).
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import DataError

HOW_TO_FIX = (
    "pass --data-dir or set ZOFO_DATA_DIR to the folder that holds the task data "
    "(leave both unset to download from the Hugging Face Hub)"
)
NO_TRAIN_NOTE = ("no train split offline: train/validation/test all sampled disjointly from validation "
                 "(test first, at most a third of it)")


@dataclass(frozen=True)
class Example:
    """One scored example: candidate answers as (context, continuation) pairs."""

    options: tuple[tuple[str, str], ...]  # one (context, continuation) pair per candidate answer
    label: int  # index of the correct option (0 for generation tasks)
    answers: tuple[str, ...] = ()  # generation tasks only: every accepted gold answer string


# A located record: (where it came from, e.g. "path:12", record).
Located = tuple[str, dict]
Template = Callable[[dict], Example]


@dataclass(frozen=True)
class Task:
    """A task: where its official splits live and how its records become examples."""

    name: str
    metric: str  # "accuracy" | "macro_f1" | "f1" (f1 => also report "em")
    generative: bool  # True: predict by greedy generation, stop at newline
    files: dict[str, str]  # official split -> file path relative to the data dir (files that exist offline)
    hub: tuple[str, str | None]  # (dataset id, config) for `datasets.load_dataset`
    read_file: Callable[[Path], list[Located]] = field(repr=False, compare=False, default=None)
    from_hub: Callable[[dict], list[dict]] = field(repr=False, compare=False, default=None)
    hard_template: Template = field(repr=False, compare=False, default=None)
    plain_template: Template = field(repr=False, compare=False, default=None)
    # Files of a full download that are preferred over `files` when present.
    full_files: dict[str, str] = field(default_factory=dict)

    def example(self, record: dict, hard_prompt: bool = True) -> Example:
        """Turn one record into an Example, with MeZO's prompt or with the raw fields only."""
        template = self.hard_template if hard_prompt else self.plain_template
        return template(record)

    def file_path(self, split: str, data_dir: Path) -> Path | None:
        """Path of an official split under `data_dir` (full-download file first), or None."""
        if split in self.full_files and (data_dir / self.full_files[split]).is_file():
            return data_dir / self.full_files[split]
        if split in self.files:
            return data_dir / self.files[split]
        if split in self.full_files:
            return data_dir / self.full_files[split]
        return None

    def has_split(self, split: str, data_dir: Path) -> bool:
        """Whether the file of `split` exists under `data_dir`."""
        path = self.file_path(split, data_dir)
        return path is not None and path.is_file()

    def read(self, split: str, data_dir=None) -> list[dict]:
        """Records of one official split, from files if a data folder is given, else from the Hub."""
        folder = resolve_data_dir(data_dir)
        if folder is None:
            located = self._read_hub(split)
        else:
            if not folder.is_dir():
                raise DataError(f"{folder}: data folder does not exist (task '{self.name}'); {HOW_TO_FIX}")
            path = self.file_path(split, folder)
            if path is None:
                raise DataError(f"task '{self.name}' has no '{split}' split (known: {sorted(self.files)})")
            if not path.is_file():
                raise DataError(
                    f"{path}: file not found (task '{self.name}', split '{split}'); {HOW_TO_FIX}"
                )
            located = self.read_file(path)
            if not located:
                raise DataError(f"{path}: no examples in this file (task '{self.name}', split '{split}')")
        for where, record in located:
            self._check(where, record)
        return [record for _, record in located]

    def _read_hub(self, split: str) -> list[Located]:
        name, config = self.hub
        try:
            import datasets
        except ImportError:
            raise DataError(
                f"task '{self.name}': no data folder given and the `datasets` package is not "
                f"installed to download {name}/{config}; {HOW_TO_FIX}, or install `datasets`"
            ) from None
        rows = datasets.load_dataset(name, config, split=split)
        source = f"hub {name}/{config} {split}"
        located = []
        for i, row in enumerate(rows):
            where = f"{source} row {i}"
            try:
                records = self.from_hub(dict(row))
            except (KeyError, ValueError, TypeError) as error:
                raise DataError(f"{where}: {describe(error)}") from None
            located.extend((where, record) for record in records)
        return located

    def _check(self, where: str, record: dict) -> None:
        """Build the record's examples once so that bad fields or labels fail early, with a location."""
        try:
            self.example(record, hard_prompt=True)
            self.example(record, hard_prompt=False)
        except (KeyError, ValueError, TypeError, IndexError, AttributeError) as error:
            raise DataError(f"{where}: {describe(error)}") from None


@dataclass
class Splits:
    """Sampled train / validation / test records and how they were drawn."""

    train: list[dict]
    validation: list[dict]
    test: list[dict]
    metadata: dict


def describe(error: Exception) -> str:
    """A short problem description; a KeyError names the missing field."""
    if isinstance(error, KeyError):
        return f"missing field {error.args[0]!r}"
    return str(error)


def resolve_data_dir(data_dir=None) -> Path | None:
    """The data folder: the argument, else $ZOFO_DATA_DIR, else None (use the Hub)."""
    if data_dir is None or data_dir == "":
        data_dir = os.environ.get("ZOFO_DATA_DIR") or None
    return Path(data_dir).expanduser() if data_dir else None


# ---------------------------------------------------------------- file reading


def text_lines(path: Path, start: int = 1):
    """(line number, line) of a UTF-8 text file; a byte that is not UTF-8 names the file and the line."""
    try:
        with open(path, "rb") as file:
            for number, raw in enumerate(file, start=start):
                yield number, raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}:{number}: not UTF-8 text (byte {error.object[error.start]:#x}); "
                        "save the file as UTF-8") from None


def read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) for each non-empty line of a JSON-lines file."""
    rows = []
    for number, line in text_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{number}: malformed JSON ({error.msg} at column {error.colno})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        rows.append((number, row))
    return rows


def read_tsv(path: Path) -> list[tuple[int, dict]]:
    """(line number, row) for each data line of a tab-separated file with a header row."""
    rows = []
    lines = text_lines(path)
    _, first = next(lines, (1, ""))
    header = first.rstrip("\r\n").split("\t")
    for number, line in lines:
        line = line.rstrip("\r\n")
        if not line:
            continue
        cells = line.split("\t")
        if len(cells) != len(header):
            raise DataError(
                f"{path}:{number}: expected {len(header)} tab-separated columns "
                f"({', '.join(header)}), found {len(cells)}"
            )
        rows.append((number, dict(zip(header, cells))))
    return rows


def read_json(path: Path):
    """A whole JSON file (SQuAD, DROP)."""
    text = "".join(line for _, line in text_lines(path))
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{error.lineno}: malformed JSON ({error.msg} at column {error.colno})") from None


def jsonl_reader(flatten: Callable[[dict], list[dict]] | None = None) -> Callable[[Path], list[Located]]:
    """A file reader for JSON-lines tasks; `flatten` turns one line into its records."""

    def read(path: Path) -> list[Located]:
        located = []
        for number, row in read_jsonl(path):
            where = f"{path}:{number}"
            try:
                records = flatten(row) if flatten else [row]
            except (KeyError, ValueError, TypeError) as error:
                raise DataError(f"{where}: {describe(error)}") from None
            located.extend((where, record) for record in records)
        return located

    return read


# ---------------------------------------------------------------- labels


def label_index(value, names: tuple[str, ...]) -> int:
    """Index of a string label among `names`; the Hub's int index is accepted too."""
    if isinstance(value, str) and value in names:
        return names.index(value)
    if type(value) is int and 0 <= value < len(names):
        return value
    raise ValueError(f"unknown label {value!r} (expected one of {', '.join(names)})")


def bool_label(value) -> int:
    """0/1 for a false/true label given as a bool (files) or as 0/1 (Hub)."""
    if isinstance(value, bool):
        return int(value)
    if type(value) is int and value in (0, 1):
        return value
    raise ValueError(f"unknown label {value!r} (expected true/false or 0/1)")


def int_label(value, n_classes: int) -> int:
    """An int class label in range(n_classes)."""
    if type(value) is int and 0 <= value < n_classes:
        return value
    raise ValueError(f"unknown label {value!r} (expected an int in 0..{n_classes - 1})")


def dedupe(strings) -> list[str]:
    """Strings in first-seen order without repeats."""
    return list(dict.fromkeys(strings))


def classification(context: str, continuations: tuple[str, ...], label: int) -> Example:
    """An Example whose candidates share one context."""
    return Example(options=tuple((context, continuation) for continuation in continuations), label=label)


# ---------------------------------------------------------------- sampling


def fit_sizes(pool_size: int, requested: tuple[int, ...]) -> tuple[int, ...]:
    """The requested sizes, scaled down proportionally (rounding down) when they exceed the pool."""
    if any(n < 0 for n in requested):
        raise ValueError(f"sample sizes must be >= 0, got {requested}")
    total = sum(requested)
    if total <= pool_size:
        return tuple(requested)
    return tuple(pool_size * n // total for n in requested)


def draw_disjoint(pool: list[dict], sizes: tuple[int, ...], rng: random.Random) -> list[list[dict]]:
    """Disjoint random samples of the given sizes (sizes must fit in the pool)."""
    picked = rng.sample(range(len(pool)), sum(sizes))
    samples, start = [], 0
    for size in sizes:
        samples.append([pool[i] for i in picked[start:start + size]])
        start += size
    return samples


def sample_splits(task: Task, data_dir=None, seed: int = 0, n_train=1000, n_val=500, n_test=1000) -> Splits:
    """MeZO's protocol: train and validation drawn disjointly from the official train split,
    test from the official validation split; all three from validation when train is missing offline."""
    folder = resolve_data_dir(data_dir)
    metadata = {
        "task": task.name,
        "seed": seed,
        "requested": {"train": n_train, "validation": n_val, "test": n_test},
        "data": str(folder) if folder is not None else "hub:" + "/".join(str(part) for part in task.hub if part),
    }
    # Each split has its own random stream and the test sample is drawn first, so the test examples do not
    # depend on how many train or validation examples were asked for (`zofo eval` relies on it).
    test_rng, rng = random.Random(f"{seed}-test"), random.Random(seed)
    train_missing_offline = "train" not in task.files and folder is not None and folder.is_dir()
    if train_missing_offline and not task.has_split("train", folder):
        pool = task.read("validation", folder)
        n_test_fit = min(n_test, len(pool) // 3)  # at most a third of the pool, whatever train asks for
        picked = set(test_rng.sample(range(len(pool)), n_test_fit))
        test = [record for i, record in enumerate(pool) if i in picked]
        rest = [record for i, record in enumerate(pool) if i not in picked]
        train, validation = draw_disjoint(rest, fit_sizes(len(rest), (n_train, n_val)), rng)
        metadata["pool_sizes"] = {"validation": len(pool)}
        metadata["source_splits"] = {"train": "validation", "validation": "validation", "test": "validation"}
        metadata["note"] = NO_TRAIN_NOTE
    else:
        train_pool = task.read("train", folder)
        eval_pool = task.read("validation", folder)
        train, validation = draw_disjoint(train_pool, fit_sizes(len(train_pool), (n_train, n_val)), rng)
        (test,) = draw_disjoint(eval_pool, fit_sizes(len(eval_pool), (n_test,)), test_rng)
        metadata["pool_sizes"] = {"train": len(train_pool), "validation": len(eval_pool)}
        metadata["source_splits"] = {"train": "train", "validation": "train", "test": "validation"}
    metadata["sizes"] = {"train": len(train), "validation": len(validation), "test": len(test)}
    return Splits(train=train, validation=validation, test=test, metadata=metadata)
