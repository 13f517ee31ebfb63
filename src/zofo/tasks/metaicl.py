"""MetaICL's tasks and settings (the paper's section 4.2): many small tasks, meta-trained on some and
tested on others.

Under <data dir>/metaicl:
    config/<setting>.json                          {"train": [task, ...], "test": [task, ...]}
    data/<task>/<task>_16_<seed>_<split>.jsonl     lines {"task", "input", "output", "options"}
with 16-shot `train` and `dev` files for the seeds 100, 13, 21, 42, 87 and one `test` file (seed 100,
the full test set). There are no 16,384-example meta-training files here: meta-training draws from the
union of a task's 16-shot files (at most about 160 distinct examples a task, against the paper's 768).

Every task is multiple choice over its `options`, scored by mean log-probability as the other tasks are.
A task is a classification task when all its examples share one option set (MetaICL reports macro-F1
for those), else a QA task (accuracy).
"""

from __future__ import annotations

import json
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from .base import Example, Task, read_jsonl, resolve_data_dir

SEEDS = (100, 13, 21, 42, 87)
SHOTS = 16


@dataclass(frozen=True)
class MetaSetting:
    """A setting's tasks that are present in the data folder, and those it names but the folder lacks."""

    name: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    missing: dict[str, list[str]] = field(default_factory=dict)  # {"train": [...], "test": [...]}

    def metadata(self) -> dict:
        return {"setting": self.name, "train_tasks": len(self.train), "test_tasks": len(self.test),
                "missing": self.missing,
                "note": "meta-training draws from the union of each task's 16-shot files (no 16,384-example files here)"}


def metaicl_folder(data_dir=None) -> Path:
    folder = resolve_data_dir(data_dir)
    if folder is None:
        raise DataError("MetaICL tasks are read from files only: pass --data-dir or set ZOFO_DATA_DIR to the "
                        "folder that holds metaicl/config and metaicl/data")
    return folder / "metaicl"


def task_file(folder: Path, task: str, seed: int, split: str) -> Path:
    return folder / "data" / task / f"{task}_{SHOTS}_{seed}_{split}.jsonl"


def load_setting(name: str, data_dir=None) -> MetaSetting:
    """The setting's task lists, keeping the tasks whose files are here; the others are named in a warning
    and in `missing` (a meta-training task needs a train file, a test task its test file and a train file
    for every seed)."""
    folder = metaicl_folder(data_dir)
    path = folder / "config" / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in (folder / "config").glob("*.json"))
        raise DataError(f"{path}: no such MetaICL setting; known settings: {', '.join(known) or 'none (no config folder)'}")
    try:
        lists = json.loads(path.read_text())
        train, test = list(lists["train"]), list(lists["test"])
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise DataError(f"{path}: expected {{\"train\": [tasks], \"test\": [tasks]}} ({error})") from None
    present = {
        "train": [t for t in train if any(task_file(folder, t, s, "train").is_file() for s in SEEDS)],
        "test": [t for t in test if task_file(folder, t, SEEDS[0], "test").is_file()
                 and all(task_file(folder, t, s, "train").is_file() for s in SEEDS)],
    }
    missing = {split: [t for t in named if t not in present[split]] for split, named in (("train", train), ("test", test))}
    if any(missing.values()):
        warnings.warn(f"MetaICL setting {name}: tasks without their files in {folder / 'data'} are left out: "
                      + "; ".join(f"{split} {', '.join(tasks)}" for split, tasks in missing.items() if tasks),
                      stacklevel=2)
    return MetaSetting(name, tuple(present["train"]), tuple(present["test"]),
                       {split: tasks for split, tasks in missing.items() if tasks})


def read_task_file(path: Path, options: bool = True) -> list[dict]:
    """A task file's records, each checked: input and output strings, at least two options, output among them.
    With options=False (meta-training pools) a record may have no options, as MetaICL's generation tasks
    (`ade_corpus_v2-dosage`, `kilt_nq`, ...) have: it is then trained on its output alone, its one option."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    records = []
    for number, record in read_jsonl(path):
        where = f"{path}:{number}"
        for key in ("input", "output", "options"):
            if key not in record:
                raise DataError(f"{where}: no '{key}' field (expected task, input, output, options)")
        choices = record["options"]
        if not isinstance(choices, list) or not all(isinstance(o, str) for o in choices):
            raise DataError(f"{where}: 'options' must be a list of answer strings, got {choices!r}")
        if not choices and not options:
            record = {**record, "options": [record["output"]]}
        elif len(choices) < 2:
            raise DataError(f"{where}: 'options' must list at least two answer strings, got {choices!r}"
                            + (" (a test task is multiple choice)" if not choices else ""))
        elif record["output"] not in choices:
            raise DataError(f"{where}: the output {record['output']!r} is not one of the options {choices}")
        records.append(record)
    if not records:
        raise DataError(f"{path}: no examples in this file")
    return records


def example(record: dict) -> Example:
    """Input as the context, each option after a space as a continuation (MetaICL without demonstrations)."""
    options = tuple((record["input"], " " + option) for option in record["options"])
    return Example(options, record["options"].index(record["output"]))


def task_of(name: str, records: list[dict]) -> Task:
    """The Task a MetaICL task is scored as: macro-F1 for classification, accuracy for QA (MetaICL's)."""
    return Task(name=name, metric="macro_f1" if is_classification(records) else "accuracy", generative=False,
                files={}, hub=("", None))


def is_classification(records: list[dict]) -> bool:
    """All examples share one option set: a classification task (macro-F1), else multiple choice (accuracy)."""
    return len({tuple(sorted(r["options"])) for r in records}) == 1


def training_pool(task: str, data_dir=None) -> list[dict]:
    """A meta-training task's examples: the union of its 16-shot train and dev files over every seed,
    duplicates (same input and output) removed, in file order. Generation tasks (no options) are kept:
    their one option is the output, which the LM loss trains on."""
    folder, seen, pool = metaicl_folder(data_dir), set(), []
    for seed in SEEDS:
        for split in ("train", "dev"):
            path = task_file(folder, task, seed, split)
            if not path.is_file():
                continue
            for record in read_task_file(path, options=False):
                key = (record["input"], record["output"])
                if key not in seen:
                    seen.add(key)
                    pool.append(record)
    if not pool:
        raise DataError(f"MetaICL task {task!r}: no 16-shot files under {folder / 'data' / task}")
    return pool


def demonstrations(task: str, seed: int, data_dir=None, per_class: int = 4) -> list[dict]:
    """The examples a test task is tuned on (or shown in context) for one seed: `per_class` of each class
    from that seed's 16-shot train file (classification), or `per_class` examples (QA), the first in the file."""
    return pick_per_class(read_task_file(task_file(metaicl_folder(data_dir), task, seed, "train")), per_class)


def pick_per_class(records: list[dict], per_class: int) -> list[dict]:
    """The first `per_class` records of each output (classification), or the first `per_class` (QA)."""
    if not is_classification(records):
        return records[:per_class]
    chosen, counts = [], {}
    for record in records:
        if counts.get(record["output"], 0) < per_class:
            counts[record["output"]] = counts.get(record["output"], 0) + 1
            chosen.append(record)
    return chosen


def with_demonstrations(record: dict, demonstrations: list[dict]) -> dict:
    """The record with the demonstrations before its input (MetaICL's direct format: "input output" pairs,
    a blank line between them). A prompt too long for the model loses tokens from the left when tokenized."""
    shown = "".join(f"{d['input']} {d['output']}\n\n" for d in demonstrations)
    return {**record, "input": shown + record["input"]}


def with_own_demonstrations(records: list[dict], per_class: int, seed) -> list[dict]:
    """MetaICL's meta-training inputs: each record with demonstrations of its own task, `per_class` per class
    (QA: `per_class`) drawn with `seed` from the other records, never itself."""
    rng, shown = random.Random(f"metaicl-demonstrations-{seed}"), []
    for i, record in enumerate(records):
        others = records[:i] + records[i + 1:]
        rng.shuffle(others)
        shown.append(with_demonstrations(record, pick_per_class(others, per_class)))
    return shown


def test_records(task: str, data_dir=None, limit: int | None = None, seed: int = 0) -> list[dict]:
    """A test task's test set, or `limit` examples of it drawn with `seed` (a cap for speed: say so)."""
    records = read_task_file(task_file(metaicl_folder(data_dir), task, SEEDS[0], "test"))
    if limit is not None and limit < len(records):
        records = random.Random(f"metaicl-test-{task}-{seed}").sample(records, limit)
    return records
