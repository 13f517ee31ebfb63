"""SuperGLUE tasks (JSON lines, one object per line): BoolQ, CB, COPA, RTE, WiC, WSC, MultiRC, ReCoRD.

Records keep the files' field names and label conventions (CB/RTE strings, BoolQ/WiC/WSC
booleans, COPA/MultiRC ints). Hub rows are converted to those conventions; the templates
accept both. Templates with hard prompt are MeZO's; the plain ones join the raw input
fields with newlines and keep the same continuations.
"""

from __future__ import annotations

from .base import (
    Example,
    Task,
    bool_label,
    classification,
    dedupe,
    int_label,
    jsonl_reader,
    label_index,
)

CB_LABELS = ("entailment", "contradiction", "neutral")
RTE_LABELS = ("entailment", "not_entailment")


# ---------------------------------------------------------------- BoolQ


def boolq_from_hub(row: dict) -> list[dict]:
    label = bool(bool_label(row["label"]))
    return [{"question": row["question"], "passage": row["passage"], "idx": row["idx"], "label": label}]


def boolq_hard(record: dict) -> Example:
    context = f"{record['passage']} {record['question']}?"
    return classification(context, (" No", " Yes"), bool_label(record["label"]))


def boolq_plain(record: dict) -> Example:
    context = f"{record['passage']}\n{record['question']}"
    return classification(context, (" No", " Yes"), bool_label(record["label"]))


BOOLQ = Task(
    name="boolq",
    metric="accuracy",
    generative=False,
    files={"validation": "superglue/boolq/val.jsonl"},
    full_files={"train": "superglue/boolq/train.jsonl"},
    hub=("super_glue", "boolq"),
    read_file=jsonl_reader(),
    from_hub=boolq_from_hub,
    hard_template=boolq_hard,
    plain_template=boolq_plain,
)

# ---------------------------------------------------------------- CB


def cb_from_hub(row: dict) -> list[dict]:
    label = CB_LABELS[label_index(row["label"], CB_LABELS)]
    return [{"premise": row["premise"], "hypothesis": row["hypothesis"], "label": label, "idx": row["idx"]}]


def cb_hard(record: dict) -> Example:
    context = f'Suppose {record["premise"]} Can we infer that "{record["hypothesis"]}"? Yes, No, or Maybe?\n'
    return classification(context, ("Yes", "No", "Maybe"), label_index(record["label"], CB_LABELS))


def cb_plain(record: dict) -> Example:
    context = f"{record['premise']}\n{record['hypothesis']}\n"
    return classification(context, ("Yes", "No", "Maybe"), label_index(record["label"], CB_LABELS))


CB = Task(
    name="cb",
    metric="macro_f1",
    generative=False,
    files={"train": "superglue/cb/train.jsonl", "validation": "superglue/cb/val.jsonl"},
    hub=("super_glue", "cb"),
    read_file=jsonl_reader(),
    from_hub=cb_from_hub,
    hard_template=cb_hard,
    plain_template=cb_plain,
)

# ---------------------------------------------------------------- COPA


def lower_first(choice: str) -> str:
    """The choice with its first letter lower-cased (the pronoun "I" stays)."""
    if choice.split(" ")[0] == "I":
        return choice
    return choice[:1].lower() + choice[1:]


def copa_from_hub(row: dict) -> list[dict]:
    fields = ("premise", "choice1", "choice2", "question", "label", "idx")
    return [{name: row[name] for name in fields}]


def copa_hard(record: dict) -> Example:
    conjunctions = {"cause": " because", "effect": " so"}
    if record["question"] not in conjunctions:
        raise ValueError(f"unknown question {record['question']!r} (expected cause or effect)")
    premise = record["premise"].rstrip()
    if premise.endswith("."):
        premise = premise[:-1]
    continuations = (" " + lower_first(record["choice1"]), " " + lower_first(record["choice2"]))
    return classification(premise + conjunctions[record["question"]], continuations, int_label(record["label"], 2))


def copa_plain(record: dict) -> Example:
    continuations = (" " + record["choice1"], " " + record["choice2"])
    return classification(record["premise"], continuations, int_label(record["label"], 2))


COPA = Task(
    name="copa",
    metric="accuracy",
    generative=False,
    files={"train": "superglue/copa/train.jsonl", "validation": "superglue/copa/val.jsonl"},
    hub=("super_glue", "copa"),
    read_file=jsonl_reader(),
    from_hub=copa_from_hub,
    hard_template=copa_hard,
    plain_template=copa_plain,
)

# ---------------------------------------------------------------- RTE


def rte_from_hub(row: dict) -> list[dict]:
    label = RTE_LABELS[label_index(row["label"], RTE_LABELS)]
    return [{"premise": row["premise"], "hypothesis": row["hypothesis"], "label": label, "idx": row["idx"]}]


def rte_hard(record: dict) -> Example:
    context = f'{record["premise"]}\nDoes this mean that "{record["hypothesis"]}" is true? Yes or No?\n'
    return classification(context, ("Yes", "No"), label_index(record["label"], RTE_LABELS))


def rte_plain(record: dict) -> Example:
    context = f"{record['premise']}\n{record['hypothesis']}\n"
    return classification(context, ("Yes", "No"), label_index(record["label"], RTE_LABELS))


RTE = Task(
    name="rte",
    metric="accuracy",
    generative=False,
    files={"train": "superglue/rte/train.jsonl", "validation": "superglue/rte/val.jsonl"},
    hub=("super_glue", "rte"),
    read_file=jsonl_reader(),
    from_hub=rte_from_hub,
    hard_template=rte_hard,
    plain_template=rte_plain,
)

# ---------------------------------------------------------------- WiC


def wic_from_hub(row: dict) -> list[dict]:
    fields = ("word", "sentence1", "sentence2", "start1", "start2", "end1", "end2", "idx")
    record = {name: row[name] for name in fields}
    record["label"] = bool(bool_label(row["label"]))
    return [record]


def wic_hard(record: dict) -> Example:
    context = (
        f'Does the word "{record["word"]}" have the same meaning in these two sentences? Yes, No?\n'
        f'{record["sentence1"]}\n{record["sentence2"]}\n'
    )
    return classification(context, ("No", "Yes"), bool_label(record["label"]))


def wic_plain(record: dict) -> Example:
    context = f"{record['word']}\n{record['sentence1']}\n{record['sentence2']}\n"
    return classification(context, ("No", "Yes"), bool_label(record["label"]))


WIC = Task(
    name="wic",
    metric="accuracy",
    generative=False,
    files={"train": "superglue/wic/train.jsonl", "validation": "superglue/wic/val.jsonl"},
    hub=("super_glue", "wic"),
    read_file=jsonl_reader(),
    from_hub=wic_from_hub,
    hard_template=wic_hard,
    plain_template=wic_plain,
)

# ---------------------------------------------------------------- WSC


def wsc_from_hub(row: dict) -> list[dict]:
    target = {name: row[name] for name in ("span1_index", "span2_index", "span1_text", "span2_text")}
    return [{"text": row["text"], "target": target, "idx": row["idx"], "label": bool(bool_label(row["label"]))}]


def wsc_hard(record: dict) -> Example:
    target = record["target"]
    context = (
        f'{record["text"]}\nIn the previous sentence, does the pronoun "{target["span2_text"].lower()}" '
        f'refer to {target["span1_text"]}? Yes or No?\n'
    )
    return classification(context, ("No", "Yes"), bool_label(record["label"]))


def wsc_plain(record: dict) -> Example:
    target = record["target"]
    context = f"{record['text']}\n{target['span1_text']}\n{target['span2_text']}\n"
    return classification(context, ("No", "Yes"), bool_label(record["label"]))


WSC = Task(
    name="wsc",
    metric="accuracy",
    generative=False,
    files={"train": "superglue/wsc/train.jsonl", "validation": "superglue/wsc/val.jsonl"},
    hub=("super_glue", "wsc"),
    read_file=jsonl_reader(),
    from_hub=wsc_from_hub,
    hard_template=wsc_hard,
    plain_template=wsc_plain,
)

# ---------------------------------------------------------------- MultiRC


def flatten_multirc(row: dict) -> list[dict]:
    """One record {passage, question, answer, label, idx} per answer of each question of the passage."""
    passage = row["passage"]
    records = []
    for question in passage["questions"]:
        for answer in question["answers"]:
            records.append({
                "passage": passage["text"],
                "question": question["question"],
                "answer": answer["text"],
                "label": answer["label"],
                "idx": {"paragraph": row["idx"], "question": question["idx"], "answer": answer["idx"]},
            })
    return records


def multirc_from_hub(row: dict) -> list[dict]:
    return [{"passage": row["paragraph"], "question": row["question"], "answer": row["answer"],
             "label": row["label"], "idx": row["idx"]}]


def multirc_hard(record: dict) -> Example:
    context = (
        f'{record["passage"]}\nQuestion: {record["question"]}\n'
        f'I found this answer "{record["answer"]}". Is that correct? Yes or No?\n'
    )
    return classification(context, ("No", "Yes"), bool_label(record["label"]))


def multirc_plain(record: dict) -> Example:
    context = f"{record['passage']}\n{record['question']}\n{record['answer']}\n"
    return classification(context, ("No", "Yes"), bool_label(record["label"]))


MULTIRC = Task(
    name="multirc",
    metric="accuracy",
    generative=False,
    files={"train": "superglue/multirc/train.jsonl", "validation": "superglue/multirc/val.jsonl"},
    hub=("super_glue", "multirc"),
    read_file=jsonl_reader(flatten_multirc),
    from_hub=multirc_from_hub,
    hard_template=multirc_hard,
    plain_template=multirc_plain,
)

# ---------------------------------------------------------------- ReCoRD


def flatten_record(row: dict) -> list[dict]:
    """One record {passage, query, entities, answers, idx} per query; entity spans are inclusive."""
    text = row["passage"]["text"]
    entities = dedupe(text[span["start"]:span["end"] + 1] for span in row["passage"]["entities"])
    return [
        {
            "passage": text,
            "query": qa["query"],
            "entities": list(entities),
            "answers": dedupe(answer["text"] for answer in qa["answers"]),
            "idx": qa["idx"],
        }
        for qa in row["qas"]
    ]


def record_from_hub(row: dict) -> list[dict]:
    return [{"passage": row["passage"], "query": row["query"], "entities": dedupe(row["entities"]),
             "answers": dedupe(row["answers"]), "idx": row["idx"]}]


def record_candidates(context: str, record: dict) -> Example:
    """One option per entity: the entity fills @placeholder, followed by the rest of the query."""
    if "@placeholder" not in record["query"]:
        raise ValueError("query has no @placeholder")
    after = record["query"].split("@placeholder", 1)[1]
    entities = record["entities"]
    gold = set(record["answers"])
    label = next((i for i, entity in enumerate(entities) if entity in gold), None)
    if label is None:
        raise ValueError(f"no candidate entity is a gold answer {sorted(gold)}")
    return Example(options=tuple((context, entity + after) for entity in entities), label=label)


def record_hard(record: dict) -> Example:
    passage = record["passage"].replace("@highlight\n", "- ")
    before = record["query"].split("@placeholder", 1)[0]
    return record_candidates(f"{passage}\n- {before}", record)


def record_plain(record: dict) -> Example:
    before = record["query"].split("@placeholder", 1)[0]
    return record_candidates(f"{record['passage']}\n{before}", record)


RECORD = Task(
    name="record",
    metric="accuracy",
    generative=False,
    files={"train": "superglue/record/train.jsonl", "validation": "superglue/record/dev32.jsonl"},
    full_files={"validation": "superglue/record/val.jsonl"},
    hub=("super_glue", "record"),
    read_file=jsonl_reader(flatten_record),
    from_hub=record_from_hub,
    hard_template=record_hard,
    plain_template=record_plain,
)
