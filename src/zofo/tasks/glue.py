"""GLUE SST-2 (tab-separated `sentence<TAB>label`, header row)."""

from __future__ import annotations

from pathlib import Path

from .base import DataError, Example, Located, Task, classification, int_label, read_tsv

SST2_WORDS = (" terrible", " great")


def read_sst2_file(path: Path) -> list[Located]:
    """Records {sentence, label, idx} of a labelled SST-2 file; idx is the row index (as on the Hub)."""
    located = []
    for idx, (number, row) in enumerate(read_tsv(path)):
        if "sentence" not in row or "label" not in row:
            problem = "missing field 'sentence' or 'label' (is this an unlabelled test file?)"
            raise DataError(f"{path}:{number}: {problem}")
        label = {"0": 0, "1": 1}.get(row["label"].strip(), row["label"])
        located.append((f"{path}:{number}", {"sentence": row["sentence"], "label": label, "idx": idx}))
    return located


def sst2_from_hub(row: dict) -> list[dict]:
    return [{"sentence": row["sentence"], "label": row["label"], "idx": row["idx"]}]


def sst2_hard(record: dict) -> Example:
    return classification(f"{record['sentence'].strip()} It was", SST2_WORDS, int_label(record["label"], 2))


def sst2_plain(record: dict) -> Example:
    return classification(record["sentence"].strip(), SST2_WORDS, int_label(record["label"], 2))


SST2 = Task(
    name="sst2",
    metric="accuracy",
    generative=False,
    files={"train": "glue/sst2/train.tsv", "validation": "glue/sst2/dev.tsv"},
    hub=("glue", "sst2"),
    read_file=read_sst2_file,
    from_hub=sst2_from_hub,
    hard_template=sst2_hard,
    plain_template=sst2_plain,
)
