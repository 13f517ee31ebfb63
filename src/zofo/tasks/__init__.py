"""Tasks of the MeZO / Bilevel ZOFO experiments: reading, sampling and prompting.

>>> splits = load_splits("sst2", data_dir="../shared/data", seed=0)
>>> example = get_task("sst2").example(splits.train[0])
"""

from __future__ import annotations

from .base import DataError, Example, Splits, Task, sample_splits
from .glue import SST2
from .qa import DROP, SQUAD
from .superglue import BOOLQ, CB, COPA, MULTIRC, RECORD, RTE, WIC, WSC
from .winogrande import WINOGRANDE

TASKS: dict[str, Task] = {
    task.name: task
    for task in (SST2, BOOLQ, CB, COPA, RTE, WIC, WSC, WINOGRANDE, MULTIRC, RECORD, SQUAD, DROP)
}


def get_task(name) -> Task:
    """The task called `name` (a Task is returned as is)."""
    if isinstance(name, Task):
        return name
    key = str(name).lower()
    if key not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[key]


def load_splits(task, data_dir=None, seed: int = 0, n_train=1000, n_val=500, n_test=1000) -> Splits:
    """Sample train/validation (disjoint, from the official train split) and test (from the
    official validation split) with random.Random(seed); see `sample_splits`."""
    return sample_splits(get_task(task), data_dir, seed=seed, n_train=n_train, n_val=n_val, n_test=n_test)


__all__ = ["TASKS", "get_task", "load_splits", "Example", "Task", "Splits", "DataError"]
