"""WinoGrande (JSON lines: sentence with "_", option1, option2, answer "1"/"2"), partial scoring."""

from __future__ import annotations

from .base import Example, Task, jsonl_reader


def winogrande_label(answer) -> int:
    """0/1 for answer "1"/"2" (files and Hub); ints 1/2 are accepted too."""
    if answer in ("1", "2", 1, 2) and not isinstance(answer, bool):
        return int(answer) - 1
    raise ValueError(f"unknown label {answer!r} (expected answer '1' or '2')")


def winogrande_from_hub(row: dict) -> list[dict]:
    return [{name: row[name] for name in ("sentence", "option1", "option2", "answer")}]


def winogrande_example(record: dict) -> Example:
    """Each option fills the blank in the context; the continuation is the rest of the sentence."""
    sentence = record["sentence"]
    if "_" not in sentence:
        raise ValueError("sentence has no '_' blank")
    before, after = sentence.split("_", 1)
    continuation = " " + after.strip()
    options = tuple(((before + record[name]).strip(), continuation) for name in ("option1", "option2"))
    return Example(options=options, label=winogrande_label(record["answer"]))


def winogrande_hard(record: dict) -> Example:
    return winogrande_example(record)


def winogrande_plain(record: dict) -> Example:
    """WinoGrande has no prompt words: the plain form is the same sentence split."""
    return winogrande_example(record)


WINOGRANDE = Task(
    name="winogrande",
    metric="accuracy",
    generative=False,
    files={"validation": "winogrande/dev.jsonl"},
    full_files={"train": "winogrande/train_xl.jsonl"},
    hub=("winogrande", "winogrande_xl"),
    read_file=jsonl_reader(),
    from_hub=winogrande_from_hub,
    hard_template=winogrande_hard,
    plain_template=winogrande_plain,
)
