"""Generation tasks: SQuAD v1.1 and DROP (whole-file JSON in their official formats).

Records: SQuAD {id, title, context, question, answers: [texts]};
DROP {passage_id, passage, question, query_id, answer, validated_answers} with DROP's answer dicts.
Predictions are greedy generations stopped at a newline; the one option holds the first gold answer.
"""

from __future__ import annotations

from pathlib import Path

from .base import DataError, Example, Located, Task, dedupe, describe, read_json


def generation(context: str, answers: list[str]) -> Example:
    """An Example with one option (context, " " + first gold answer) and every gold answer."""
    if not answers:
        raise ValueError("no gold answer")
    return Example(options=((context, " " + answers[0]),), label=0, answers=tuple(answers))


# ---------------------------------------------------------------- SQuAD


def read_squad_file(path: Path) -> list[Located]:
    """One record per question of a SQuAD v1.1 file."""
    data = read_json(path)
    located = []
    where = str(path)
    try:
        for a, article in enumerate(data["data"]):
            for p, paragraph in enumerate(article["paragraphs"]):
                for q, qa in enumerate(paragraph["qas"]):
                    where = f"{path}: data[{a}].paragraphs[{p}].qas[{q}]"
                    record = {
                        "id": qa["id"],
                        "title": article["title"],
                        "context": paragraph["context"],
                        "question": qa["question"],
                        "answers": [answer["text"] for answer in qa["answers"]],
                    }
                    located.append((where, record))
    except (KeyError, TypeError) as error:
        raise DataError(f"{where}: {describe(error)}") from None
    return located


def squad_from_hub(row: dict) -> list[dict]:
    fields = ("id", "title", "context", "question")
    return [{**{name: row[name] for name in fields}, "answers": list(row["answers"]["text"])}]


def squad_hard(record: dict) -> Example:
    context = (
        f"Title: {record['title']}\nContext: {record['context']}\n"
        f"Question: {record['question'].strip()}\nAnswer:"
    )
    return generation(context, dedupe(record["answers"]))


def squad_plain(record: dict) -> Example:
    return generation(f"{record['context']}\n{record['question'].strip()}", dedupe(record["answers"]))


SQUAD = Task(
    name="squad",
    metric="f1",
    generative=True,
    files={"train": "squad/train-v1.1.json", "validation": "squad/dev-v1.1.json"},
    hub=("squad", None),
    read_file=read_squad_file,
    from_hub=squad_from_hub,
    hard_template=squad_hard,
    plain_template=squad_plain,
)

# ---------------------------------------------------------------- DROP


def drop_answer_text(answer: dict) -> str:
    """A DROP answer dict as text: the number, else the spans joined by ", ", else "day month year"."""
    if str(answer.get("number", "")).strip():
        return str(answer["number"]).strip()
    spans = [span for span in answer.get("spans", []) if span.strip()]
    if spans:
        return ", ".join(spans)
    date = answer.get("date") or {}
    parts = [str(date.get(key, "")).strip() for key in ("day", "month", "year")]
    return " ".join(part for part in parts if part)


def drop_answers(record: dict) -> list[str]:
    """Texts of the main answer and the validated answers, without empties or repeats."""
    texts = [drop_answer_text(answer) for answer in [record["answer"], *record.get("validated_answers", [])]]
    return dedupe(text for text in texts if text)


def read_drop_file(path: Path) -> list[Located]:
    """One record per question of a DROP file ({passage_id: {passage, qa_pairs}})."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object keyed by passage id")
    located = []
    where = str(path)
    try:
        for passage_id, item in data.items():
            for q, qa in enumerate(item["qa_pairs"]):
                where = f"{path}: {passage_id}.qa_pairs[{q}]"
                record = {
                    "passage_id": passage_id,
                    "passage": item["passage"],
                    "question": qa["question"],
                    "query_id": qa["query_id"],
                    "answer": qa["answer"],
                    "validated_answers": qa.get("validated_answers", []),
                }
                located.append((where, record))
    except (KeyError, TypeError, AttributeError) as error:
        raise DataError(f"{where}: {describe(error)}") from None
    return located


def drop_from_hub(row: dict) -> list[dict]:
    """A Hub row (answers_spans: {spans, types}) with its answers as DROP answer dicts."""
    empty_date = {"day": "", "month": "", "year": ""}
    answers = []
    for span, kind in zip(row["answers_spans"]["spans"], row["answers_spans"]["types"]):
        if kind == "number":
            answers.append({"number": span, "date": dict(empty_date), "spans": []})
        else:
            answers.append({"number": "", "date": dict(empty_date), "spans": [span]})
    if not answers:
        raise ValueError("no answer in answers_spans")
    return [{"passage_id": row["section_id"], "passage": row["passage"], "question": row["question"],
             "query_id": row["query_id"], "answer": answers[0], "validated_answers": answers[1:]}]


def drop_hard(record: dict) -> Example:
    context = f"Passage: {record['passage']}\nQuestion: {record['question']}\nAnswer:"
    return generation(context, drop_answers(record))


def drop_plain(record: dict) -> Example:
    return generation(f"{record['passage']}\n{record['question']}", drop_answers(record))


DROP = Task(
    name="drop",
    metric="f1",
    generative=True,
    files={"train": "drop/drop_dataset_train.json", "validation": "drop/drop_dataset_dev.json"},
    hub=("drop", None),
    read_file=read_drop_file,
    from_hub=drop_from_hub,
    hard_template=drop_hard,
    plain_template=drop_plain,
)
