"""Task loaders: real offline data, sampling, templates, Hub normalization and bad input."""

import functools
import json
import os
import sys
import types
from pathlib import Path

import pytest

from zofo.tasks import TASKS, DataError, Example, Splits, Task, get_task, load_splits

DATA_DIR = Path(os.environ.get("ZOFO_DATA_DIR") or Path(__file__).parents[1] / ".." / "shared" / "data").resolve()

OFFLINE_TASKS = ["sst2", "boolq", "cb", "copa", "rte", "wic", "wsc", "winogrande", "multirc", "record"]

# Record counts of each labelled official split in the offline data (data README).
COUNTS = {
    ("sst2", "train"): 67349, ("sst2", "validation"): 872,
    ("boolq", "validation"): 3270,
    ("cb", "train"): 250, ("cb", "validation"): 56,
    ("copa", "train"): 400, ("copa", "validation"): 100,
    ("rte", "train"): 2490, ("rte", "validation"): 277,
    ("wic", "train"): 5428, ("wic", "validation"): 638,
    ("wsc", "train"): 554, ("wsc", "validation"): 104,
    ("winogrande", "validation"): 1267,
    ("multirc", "train"): 27243, ("multirc", "validation"): 4848,  # flattened answers
    ("record", "train"): 32, ("record", "validation"): 32,
}
MULTIRC_PASSAGES = {"train": 456, "validation": 83}

FIELDS = {
    "sst2": {"sentence", "label", "idx"},
    "boolq": {"passage", "question", "label", "idx"},
    "cb": {"premise", "hypothesis", "label", "idx"},
    "copa": {"premise", "choice1", "choice2", "question", "label", "idx"},
    "rte": {"premise", "hypothesis", "label", "idx"},
    "wic": {"word", "sentence1", "sentence2", "start1", "start2", "end1", "end2", "label", "idx"},
    "wsc": {"text", "target", "label", "idx"},
    "winogrande": {"sentence", "option1", "option2", "answer"},
    "multirc": {"passage", "question", "answer", "label", "idx"},
    "record": {"passage", "query", "entities", "answers", "idx"},
}

# Sizes drawn with the default request (1000 train, 500 validation, 1000 test).
EXPECTED_SIZES = {
    "sst2": (1000, 500, 872),
    "boolq": (1000, 500, 1000),
    "cb": (166, 83, 56),
    "copa": (266, 133, 100),
    "rte": (1000, 500, 277),
    "wic": (1000, 500, 638),
    "wsc": (369, 184, 104),
    "winogrande": (563, 281, 422),  # test first, at most a third of the 1,267 examples
    "multirc": (1000, 500, 1000),
    "record": (21, 10, 32),
}
NO_TRAIN_OFFLINE = {"boolq", "winogrande"}


@functools.lru_cache(maxsize=None)
def read(name, split):
    return get_task(name).read(split, DATA_DIR)


@functools.lru_cache(maxsize=None)
def splits(name, seed=0):
    return load_splits(name, DATA_DIR, seed=seed)


def key(record):
    return json.dumps(record, sort_keys=True)


def continuations(example):
    return [continuation for _, continuation in example.options]


def expected_label(name, record):
    """The gold option index, worked out from the raw label independently of the loaders."""
    value = record.get("label")
    if name in ("sst2", "copa", "multirc"):
        return value
    if name in ("boolq", "wic", "wsc"):
        return int(value)
    if name == "cb":
        return ["entailment", "contradiction", "neutral"].index(value)
    if name == "rte":
        return ["entailment", "not_entailment"].index(value)
    if name == "winogrande":
        return int(record["answer"]) - 1
    raise AssertionError(name)


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------- registry


def test_registry():
    assert list(TASKS) == OFFLINE_TASKS[:8] + ["multirc", "record", "squad", "drop"]
    assert get_task("SST2") is TASKS["sst2"]
    assert get_task(TASKS["cb"]) is TASKS["cb"]
    with pytest.raises(ValueError, match="known tasks: sst2, boolq"):
        get_task("mnli")
    assert {task.metric for task in TASKS.values()} <= {"accuracy", "macro_f1", "f1"}
    assert [name for name, task in TASKS.items() if task.generative] == ["squad", "drop"]
    assert TASKS["boolq"].files == {"validation": "superglue/boolq/val.jsonl"}
    assert TASKS["winogrande"].files == {"validation": "winogrande/dev.jsonl"}
    assert TASKS["sst2"].hub == ("glue", "sst2")
    assert TASKS["winogrande"].hub == ("winogrande", "winogrande_xl")
    assert TASKS["squad"].hub == ("squad", None)


def test_task_files_exist_offline():
    for name in OFFLINE_TASKS:
        for relative in TASKS[name].files.values():
            assert (DATA_DIR / relative).is_file(), relative


# ---------------------------------------------------------------- real offline data


@pytest.mark.parametrize("name,split", list(COUNTS))
def test_official_split_counts_and_fields(name, split):
    records = read(name, split)
    assert len(records) == COUNTS[(name, split)]
    for record in records:
        assert FIELDS[name] <= set(record)  # WiC files also carry "version"
    if name in ("multirc", "record"):  # records built by the loader: exactly these fields
        assert all(set(record) == FIELDS[name] for record in records)


@pytest.mark.parametrize("split", ["train", "validation"])
def test_multirc_is_flattened(split):
    records = read("multirc", split)
    assert len({record["idx"]["paragraph"] for record in records}) == MULTIRC_PASSAGES[split]
    assert len(records) > MULTIRC_PASSAGES[split]
    assert {record["label"] for record in records} == {0, 1}


def test_record_candidates_are_deduplicated_entities():
    for record in read("record", "train") + read("record", "validation"):
        assert len(record["entities"]) == len(set(record["entities"]))
        assert record["answers"] and set(record["answers"]) & set(record["entities"])
        assert all(entity in record["passage"] for entity in record["entities"])


def test_sst2_labels_are_ints():
    assert {record["label"] for record in read("sst2", "train")} == {0, 1}


@pytest.mark.parametrize("name", OFFLINE_TASKS)
def test_load_splits_sizes_sources_and_disjointness(name):
    result = splits(name)
    assert isinstance(result, Splits)
    sizes = (len(result.train), len(result.validation), len(result.test))
    assert sizes == EXPECTED_SIZES[name]
    assert result.metadata["sizes"] == dict(zip(["train", "validation", "test"], sizes))
    assert result.metadata["task"] == name and result.metadata["seed"] == 0

    train_keys = {key(r) for r in result.train}
    validation_keys = {key(r) for r in result.validation}
    test_keys = {key(r) for r in result.test}
    assert len(train_keys) == sizes[0] and len(validation_keys) == sizes[1] and len(test_keys) == sizes[2]
    assert not train_keys & validation_keys
    assert not train_keys & test_keys
    assert not validation_keys & test_keys

    validation_pool = {key(r) for r in read(name, "validation")}
    assert test_keys <= validation_pool
    if name in NO_TRAIN_OFFLINE:
        assert result.metadata["note"] == (
            "no train split offline: train/validation/test all sampled disjointly from validation "
            "(test first, at most a third of it)"
        )
        assert result.metadata["source_splits"] == {"train": "validation", "validation": "validation", "test": "validation"}
        assert train_keys <= validation_pool and validation_keys <= validation_pool
    else:
        assert "note" not in result.metadata
        assert result.metadata["source_splits"] == {"train": "train", "validation": "train", "test": "validation"}
        train_pool = {key(r) for r in read(name, "train")}
        assert train_keys <= train_pool and validation_keys <= train_pool


@pytest.mark.parametrize("name", OFFLINE_TASKS)
def test_load_splits_deterministic_by_seed(name):
    first = splits(name, seed=0)
    again = load_splits(name, DATA_DIR, seed=0)
    other = splits(name, seed=1)
    assert (again.train, again.validation, again.test) == (first.train, first.validation, first.test)
    assert [key(r) for r in other.train] != [key(r) for r in first.train]


@pytest.mark.parametrize("name", ["copa", "winogrande"])  # with and without an official train split offline
def test_the_test_sample_does_not_depend_on_the_train_and_validation_sizes(name):
    # `zofo eval RUN` rebuilds a run's test sample from its seed alone.
    reference = [key(r) for r in load_splits(name, DATA_DIR, seed=3).test]
    for n_train, n_val in ((10, 5), (50, 20)):
        assert [key(r) for r in load_splits(name, DATA_DIR, seed=3, n_train=n_train, n_val=n_val).test] == reference


def test_load_splits_small_request_and_data_dir_from_env(monkeypatch):
    monkeypatch.setenv("ZOFO_DATA_DIR", str(DATA_DIR))
    result = load_splits(get_task("rte"), seed=3, n_train=16, n_val=8, n_test=10)
    assert (len(result.train), len(result.validation), len(result.test)) == (16, 8, 10)
    assert result.metadata["data"] == str(DATA_DIR)


@pytest.mark.parametrize("name", OFFLINE_TASKS)
def test_examples_hard_and_plain_share_continuations_and_label(name):
    task = get_task(name)
    for record in splits(name).test:
        hard = task.example(record, hard_prompt=True)
        plain = task.example(record)
        assert plain == hard  # hard prompt is the default
        plain = task.example(record, hard_prompt=False)
        assert isinstance(hard, Example)
        if name == "copa":  # the hard prompt lower-cases the choice's first letter
            assert [c.lower() for c in continuations(hard)] == [c.lower() for c in continuations(plain)]
        else:
            assert continuations(hard) == continuations(plain)
        assert hard.label == plain.label
        assert hard.answers == plain.answers == ()
        if name == "record":
            assert len(hard.options) == len(record["entities"])
            assert record["entities"][hard.label] in record["answers"]
        else:
            assert hard.label == expected_label(name, record)
            assert len(hard.options) == (3 if name == "cb" else 2)


# ---------------------------------------------------------------- templates on hand-written records


def test_sst2_template():
    record = {"sentence": " a charming journey . ", "label": 1, "idx": 0}
    assert get_task("sst2").example(record) == Example(
        options=(("a charming journey . It was", " terrible"), ("a charming journey . It was", " great")), label=1
    )
    assert get_task("sst2").example(record, hard_prompt=False) == Example(
        options=(("a charming journey .", " terrible"), ("a charming journey .", " great")), label=1
    )


def test_boolq_template():
    record = {"question": "is it wet", "passage": "Water -- Water is wet.", "idx": 0, "label": False}
    hard = get_task("boolq").example(record)
    assert hard.options == (("Water -- Water is wet. is it wet?", " No"), ("Water -- Water is wet. is it wet?", " Yes"))
    assert hard.label == 0
    plain = get_task("boolq").example(record, hard_prompt=False)
    assert plain.options[1] == ("Water -- Water is wet.\nis it wet", " Yes")
    assert get_task("boolq").example({**record, "label": True}).label == 1


def test_cb_template():
    record = {"premise": "It rained.", "hypothesis": "the ground is wet", "label": "neutral", "idx": 0}
    context = 'Suppose It rained. Can we infer that "the ground is wet"? Yes, No, or Maybe?\n'
    example = get_task("cb").example(record)
    assert example.options == ((context, "Yes"), (context, "No"), (context, "Maybe"))
    assert example.label == 2
    assert get_task("cb").example({**record, "label": "contradiction"}).label == 1
    assert get_task("cb").example(record, hard_prompt=False).options[0] == ("It rained.\nthe ground is wet\n", "Yes")


def test_rte_template():
    record = {"premise": "A dog barks.", "hypothesis": "An animal makes noise.", "label": "not_entailment", "idx": 0}
    context = 'A dog barks.\nDoes this mean that "An animal makes noise." is true? Yes or No?\n'
    example = get_task("rte").example(record)
    assert example.options == ((context, "Yes"), (context, "No"))
    assert example.label == 1
    assert get_task("rte").example(record, hard_prompt=False).options[0] == ("A dog barks.\nAn animal makes noise.\n", "Yes")


def test_wic_template():
    record = {"word": "bank", "sentence1": "The river bank.", "sentence2": "The bank closed.", "label": True,
              "start1": 10, "start2": 4, "end1": 14, "end2": 8, "idx": 0}
    context = ('Does the word "bank" have the same meaning in these two sentences? Yes, No?\n'
               "The river bank.\nThe bank closed.\n")
    example = get_task("wic").example(record)
    assert example.options == ((context, "No"), (context, "Yes"))
    assert example.label == 1
    assert get_task("wic").example(record, hard_prompt=False).options[0] == (
        "bank\nThe river bank.\nThe bank closed.\n", "No")


def test_wsc_template():
    record = {"text": "Mark told Pete lies. He was wrong.", "label": False, "idx": 0,
              "target": {"span1_text": "Mark", "span1_index": 0, "span2_text": "He", "span2_index": 4}}
    context = 'Mark told Pete lies. He was wrong.\nIn the previous sentence, does the pronoun "he" refer to Mark? Yes or No?\n'
    example = get_task("wsc").example(record)
    assert example.options == ((context, "No"), (context, "Yes"))
    assert example.label == 0
    assert get_task("wsc").example(record, hard_prompt=False).options[1] == (
        "Mark told Pete lies. He was wrong.\nMark\nHe\n", "Yes")


def test_multirc_template():
    record = {"passage": "Sam ate.", "question": "Who ate?", "answer": "Sam", "label": 1,
              "idx": {"paragraph": 0, "question": 0, "answer": 0}}
    context = 'Sam ate.\nQuestion: Who ate?\nI found this answer "Sam". Is that correct? Yes or No?\n'
    example = get_task("multirc").example(record)
    assert example.options == ((context, "No"), (context, "Yes"))
    assert example.label == 1
    assert get_task("multirc").example(record, hard_prompt=False).options[0] == ("Sam ate.\nWho ate?\nSam\n", "No")


def test_copa_template():
    record = {"premise": "My body cast a shadow.", "choice1": "The sun was rising.", "choice2": "I stood up.",
              "question": "cause", "label": 0, "idx": 0}
    example = get_task("copa").example(record)
    assert example.options == (("My body cast a shadow because", " the sun was rising."),
                                ("My body cast a shadow because", " I stood up."))
    assert example.label == 0
    effect = get_task("copa").example({**record, "question": "effect", "label": 1})
    assert effect.options[0] == ("My body cast a shadow so", " the sun was rising.")
    assert effect.label == 1
    plain = get_task("copa").example(record, hard_prompt=False)
    assert plain.options == (("My body cast a shadow.", " The sun was rising."), ("My body cast a shadow.", " I stood up."))


def test_winogrande_template():
    record = {"sentence": "Sarah was a better surgeon than Maria so _ got the easier cases.",
              "option1": "Sarah", "option2": "Maria", "answer": "2"}
    example = get_task("winogrande").example(record)
    assert example.options == (
        ("Sarah was a better surgeon than Maria so Sarah", " got the easier cases."),
        ("Sarah was a better surgeon than Maria so Maria", " got the easier cases."),
    )
    assert example.label == 1
    assert get_task("winogrande").example(record, hard_prompt=False) == example


def test_record_template():
    record = {"passage": "Bob met Ann in Rome.\n@highlight\nBob is happy\n@highlight\nAnn left",
              "query": "They saw @placeholder in Rome.", "entities": ["Bob", "Ann", "Rome"],
              "answers": ["Ann"], "idx": 0}
    context = "Bob met Ann in Rome.\n- Bob is happy\n- Ann left\n- They saw "
    example = get_task("record").example(record)
    assert example.options == ((context, "Bob in Rome."), (context, "Ann in Rome."), (context, "Rome in Rome."))
    assert example.label == 1
    plain = get_task("record").example(record, hard_prompt=False)
    assert plain.options[0] == (record["passage"] + "\nThey saw ", "Bob in Rome.")
    assert plain.label == 1


def test_squad_template():
    record = {"id": "q1", "title": "Cats", "context": "Cats sleep a lot.", "question": " How much do cats sleep? ",
              "answers": ["a lot", "a lot", "lot"]}
    example = get_task("squad").example(record)
    context = "Title: Cats\nContext: Cats sleep a lot.\nQuestion: How much do cats sleep?\nAnswer:"
    assert example == Example(options=((context, " a lot"),), label=0, answers=("a lot", "lot"))
    plain = get_task("squad").example(record, hard_prompt=False)
    assert plain.options == (("Cats sleep a lot.\nHow much do cats sleep?", " a lot"),)
    assert plain.answers == ("a lot", "lot")


def test_drop_template_and_answers():
    empty_date = {"day": "", "month": "", "year": ""}
    record = {
        "passage_id": "p1", "passage": "Two goals.", "question": "How many goals?", "query_id": "q1",
        "answer": {"number": "2", "date": empty_date, "spans": []},
        "validated_answers": [{"number": "", "date": empty_date, "spans": ["two", "goals"]},
                              {"number": "", "date": {"day": "5", "month": "May", "year": "1990"}, "spans": []},
                              {"number": "2", "date": empty_date, "spans": []}],
    }
    example = get_task("drop").example(record)
    context = "Passage: Two goals.\nQuestion: How many goals?\nAnswer:"
    assert example == Example(options=((context, " 2"),), label=0, answers=("2", "two, goals", "5 May 1990"))
    plain = get_task("drop").example(record, hard_prompt=False)
    assert plain.options == (("Two goals.\nHow many goals?", " 2"),)


# ---------------------------------------------------------------- official formats written by the test


def squad_file(titles_and_questions):
    data = []
    for title, questions in titles_and_questions:
        qas = [{"id": f"{title}-{i}", "question": question, "answers": [{"text": answer, "answer_start": 0}
                                                                         for answer in answers]}
               for i, (question, answers) in enumerate(questions)]
        data.append({"title": title, "paragraphs": [{"context": f"About {title}.", "qas": qas}]})
    return {"version": "1.1", "data": data}


def test_squad_loader(tmp_path):
    (tmp_path / "squad").mkdir()
    train = squad_file([(f"T{a}", [(f"q{a}{q}?", [f"ans{a}{q}"]) for q in range(5)]) for a in range(4)])
    dev = squad_file([("Dev", [("Who?", ["Ann", "Ann", "Ann B."]), ("What?", ["x"])])])
    (tmp_path / "squad" / "train-v1.1.json").write_text(json.dumps(train))
    (tmp_path / "squad" / "dev-v1.1.json").write_text(json.dumps(dev))

    records = get_task("squad").read("validation", tmp_path)
    assert records[0] == {"id": "Dev-0", "title": "Dev", "context": "About Dev.", "question": "Who?",
                          "answers": ["Ann", "Ann", "Ann B."]}
    assert get_task("squad").example(records[0]).answers == ("Ann", "Ann B.")

    result = load_splits("squad", tmp_path, seed=0, n_train=10, n_val=5, n_test=5)
    assert (len(result.train), len(result.validation), len(result.test)) == (10, 5, 2)
    assert not {r["id"] for r in result.train} & {r["id"] for r in result.validation}


def test_drop_loader(tmp_path):
    empty_date = {"day": "", "month": "", "year": ""}
    data = {
        "nfl_1": {"passage": "P1", "qa_pairs": [
            {"question": "How many?", "query_id": "a", "answer": {"number": "3", "date": empty_date, "spans": []},
             "validated_answers": [{"number": "three", "date": empty_date, "spans": []}]},
            {"question": "When?", "query_id": "b",
             "answer": {"number": "", "date": {"day": "1", "month": "June", "year": "2001"}, "spans": []}},
        ]},
        "nfl_2": {"passage": "P2", "qa_pairs": [
            {"question": "Who?", "query_id": "c", "answer": {"number": "", "date": empty_date, "spans": ["A", "B"]},
             "validated_answers": []},
        ]},
    }
    (tmp_path / "drop").mkdir()
    (tmp_path / "drop" / "drop_dataset_dev.json").write_text(json.dumps(data))
    records = get_task("drop").read("validation", tmp_path)
    assert [r["query_id"] for r in records] == ["a", "b", "c"]
    assert records[0]["passage_id"] == "nfl_1" and records[2]["passage"] == "P2"
    task = get_task("drop")
    assert [task.example(r).answers for r in records] == [("3", "three"), ("1 June 2001",), ("A, B",)]
    with pytest.raises(DataError, match="drop_dataset_train.json"):
        task.read("train", tmp_path)


def record_line(idx, text, entities, query, answers):
    spans = [{"start": text.index(e), "end": text.index(e) + len(e) - 1} for e in entities]
    answer_spans = [{"start": text.index(a), "end": text.index(a) + len(a) - 1, "text": a} for a in answers]
    return {"source": "CNN", "idx": idx, "passage": {"text": text, "entities": spans},
            "qas": [{"query": query, "answers": answer_spans, "idx": idx}]}


def test_full_record_loader_prefers_val_jsonl(tmp_path):
    text = "Ann met Bob in Rome. Bob left.\n@highlight\nAnn stayed"
    rows = [record_line(i, text, ["Ann", "Bob", "Rome", "Bob"], "@placeholder stayed in Rome.", ["Ann"])
            for i in range(6)]
    folder = tmp_path / "superglue" / "record"
    write_jsonl(folder / "train.jsonl", rows)
    write_jsonl(folder / "val.jsonl", rows[:3])
    write_jsonl(folder / "dev32.jsonl", rows[:1])
    records = get_task("record").read("validation", tmp_path)
    assert len(records) == 3
    assert records[0]["entities"] == ["Ann", "Bob", "Rome"]
    assert records[0]["answers"] == ["Ann"]
    example = get_task("record").example(records[0])
    assert example.label == 0
    assert example.options[2] == ("Ann met Bob in Rome. Bob left.\n- Ann stayed\n- ", "Rome stayed in Rome.")
    (folder / "val.jsonl").unlink()
    assert len(get_task("record").read("validation", tmp_path)) == 1  # FewGLUE dev32 fallback


def test_full_download_train_files_are_used(tmp_path):
    boolq = [{"question": f"q{i}", "passage": "p", "idx": i, "label": i % 2 == 0} for i in range(20)]
    write_jsonl(tmp_path / "superglue" / "boolq" / "train.jsonl", boolq)
    write_jsonl(tmp_path / "superglue" / "boolq" / "val.jsonl", boolq[:5])
    result = load_splits("boolq", tmp_path, n_train=6, n_val=3, n_test=10)
    assert "note" not in result.metadata
    assert (len(result.train), len(result.validation), len(result.test)) == (6, 3, 5)

    wino = [{"sentence": f"A{i} saw _ go.", "option1": "x", "option2": "y", "answer": "1"} for i in range(10)]
    write_jsonl(tmp_path / "winogrande" / "train_xl.jsonl", wino)
    write_jsonl(tmp_path / "winogrande" / "dev.jsonl", wino[:4])
    result = load_splits("winogrande", tmp_path, n_train=4, n_val=2, n_test=4)
    assert result.metadata["source_splits"]["train"] == "train" and "note" not in result.metadata


def test_scaling_when_only_validation_exists(tmp_path):
    # The test sample takes at most a third of the pool; train and validation share the rest 2 : 1.
    rows = [{"question": f"q{i}", "passage": "p", "idx": i, "label": True} for i in range(10)]
    write_jsonl(tmp_path / "superglue" / "boolq" / "val.jsonl", rows)
    result = load_splits("boolq", tmp_path, n_train=1000, n_val=500, n_test=1000)
    assert result.metadata["sizes"] == {"train": 4, "validation": 2, "test": 3}
    assert result.metadata["requested"] == {"train": 1000, "validation": 500, "test": 1000}
    indices = [r["idx"] for r in result.train + result.validation + result.test]
    assert len(set(indices)) == len(indices) == 9


# ---------------------------------------------------------------- the Hub (a stand-in `datasets` module)


def fake_datasets(monkeypatch, tables):
    """Install a stand-in `datasets` whose load_dataset serves `tables[(id, config, split)]`."""
    calls = []

    def load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        return tables[(name, config, split)]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.delenv("ZOFO_DATA_DIR", raising=False)
    return calls


def test_hub_rows_are_normalized_to_file_conventions(monkeypatch):
    tables = {
        ("super_glue", "boolq", "validation"): [{"question": "q", "passage": "p", "idx": 0, "label": 1}],
        ("super_glue", "cb", "validation"): [{"premise": "p", "hypothesis": "h", "idx": 0, "label": 2}],
        ("super_glue", "rte", "validation"): [{"premise": "p", "hypothesis": "h", "idx": 0, "label": 1}],
        ("super_glue", "wsc", "validation"): [{"text": "A saw B. He ran.", "span1_index": 0, "span2_index": 3,
                                               "span1_text": "A", "span2_text": "He", "idx": 0, "label": 1}],
        ("super_glue", "multirc", "validation"): [{"paragraph": "P", "question": "Q", "answer": "A", "label": 0,
                                                   "idx": {"paragraph": 0, "question": 0, "answer": 0}}],
        ("super_glue", "record", "validation"): [{"passage": "Ann met Bob.", "query": "@placeholder smiled.",
                                                  "entities": ["Ann", "Bob", "Ann"], "entity_spans": {},
                                                  "answers": ["Bob", "Bob"], "idx": {"passage": 0, "query": 0}}],
        ("squad", None, "validation"): [{"id": "x", "title": "T", "context": "C", "question": "Q",
                                         "answers": {"text": ["a", "b"], "answer_start": [0, 0]}}],
        ("drop", None, "validation"): [{"section_id": "s", "query_id": "q", "passage": "P", "question": "Q",
                                        "answers_spans": {"spans": ["4", "four"], "types": ["number", "span"]}}],
    }
    calls = fake_datasets(monkeypatch, tables)
    assert get_task("boolq").read("validation")[0]["label"] is True
    assert get_task("cb").read("validation")[0]["label"] == "neutral"
    assert get_task("rte").read("validation")[0]["label"] == "not_entailment"
    wsc = get_task("wsc").read("validation")[0]
    assert wsc["target"]["span2_text"] == "He" and wsc["label"] is True
    assert get_task("multirc").read("validation")[0]["passage"] == "P"
    record = get_task("record").read("validation")[0]
    assert record["entities"] == ["Ann", "Bob"] and record["answers"] == ["Bob"]
    assert get_task("record").example(record).label == 1
    squad = get_task("squad").read("validation")[0]
    assert squad["answers"] == ["a", "b"]
    drop = get_task("drop").read("validation")[0]
    assert get_task("drop").example(drop).answers == ("4", "four")
    assert ("super_glue", "boolq", "validation") in calls


def test_hub_ints_are_accepted_by_templates():
    assert get_task("cb").example({"premise": "p", "hypothesis": "h", "label": 1}).label == 1
    assert get_task("wic").example({"word": "w", "sentence1": "a", "sentence2": "b", "label": 1}).label == 1
    assert get_task("winogrande").example({"sentence": "a _ b", "option1": "x", "option2": "y", "answer": 2}).label == 1


def test_load_splits_from_hub_uses_train_split(monkeypatch):
    tables = {
        ("glue", "sst2", "train"): [{"sentence": f"s{i}", "label": i % 2, "idx": i} for i in range(12)],
        ("glue", "sst2", "validation"): [{"sentence": f"v{i}", "label": 0, "idx": i} for i in range(3)],
    }
    fake_datasets(monkeypatch, tables)
    result = load_splits("sst2", seed=0, n_train=8, n_val=4, n_test=5)
    assert (len(result.train), len(result.validation), len(result.test)) == (8, 4, 3)
    assert "note" not in result.metadata and result.metadata["data"] == "hub:glue/sst2"


def test_no_data_dir_and_no_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    monkeypatch.delenv("ZOFO_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="ZOFO_DATA_DIR") as error:
        get_task("rte").read("train")
    assert "datasets" in str(error.value)


# ---------------------------------------------------------------- bad input


def test_missing_data_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist") as error:
        get_task("rte").read("train", tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(error.value)


def test_missing_file(tmp_path):
    # A missing train file is an error for tasks that have one offline (no silent fallback).
    write_jsonl(tmp_path / "superglue" / "rte" / "val.jsonl", [{"premise": "p", "hypothesis": "h", "label": "entailment"}])
    with pytest.raises(DataError) as error:
        load_splits("rte", tmp_path)
    message = str(error.value)
    assert str(tmp_path / "superglue" / "rte" / "train.jsonl") in message
    assert "rte" in message and "--data-dir" in message and "ZOFO_DATA_DIR" in message


def test_malformed_json_line(tmp_path):
    path = tmp_path / "superglue" / "rte" / "train.jsonl"
    write_jsonl(path, [{"premise": "p", "hypothesis": "h", "label": "entailment", "idx": 0}])
    with open(path, "a") as file:
        file.write('{"premise": "p", "hypothesis": \n')
    with pytest.raises(DataError, match="malformed JSON") as error:
        get_task("rte").read("train", tmp_path)
    assert f"{path}:2:" in str(error.value)


def test_wrong_tsv_column_count(tmp_path):
    path = tmp_path / "glue" / "sst2" / "train.tsv"
    path.parent.mkdir(parents=True)
    path.write_text("sentence\tlabel\ngood film\t1\nbad\tfilm\t0\n")
    with pytest.raises(DataError, match="expected 2 tab-separated columns") as error:
        get_task("sst2").read("train", tmp_path)
    assert f"{path}:3:" in str(error.value)


@pytest.mark.parametrize("name,row,value", [
    ("cb", {"premise": "p", "hypothesis": "h", "label": "maybe", "idx": 1}, "'maybe'"),
    ("boolq", {"question": "q", "passage": "p", "label": "yes", "idx": 1}, "'yes'"),
    ("copa", {"premise": "p.", "choice1": "a", "choice2": "b", "question": "cause", "label": 2, "idx": 1}, "2"),
    ("winogrande", {"sentence": "a _ b", "option1": "x", "option2": "y", "answer": "3"}, "'3'"),
])
def test_unknown_label(tmp_path, name, row, value):
    task = get_task(name)
    relative = task.files["validation"]
    good = {"cb": {"premise": "p", "hypothesis": "h", "label": "neutral", "idx": 0},
            "boolq": {"question": "q", "passage": "p", "label": True, "idx": 0},
            "copa": {"premise": "p.", "choice1": "a", "choice2": "b", "question": "cause", "label": 1, "idx": 0},
            "winogrande": {"sentence": "a _ b", "option1": "x", "option2": "y", "answer": "1"}}[name]
    path = write_jsonl(tmp_path / relative, [good, row])
    with pytest.raises(DataError, match="unknown label") as error:
        task.read("validation", tmp_path)
    assert f"{path}:2:" in str(error.value) and value in str(error.value)


def test_unknown_sst2_label(tmp_path):
    path = tmp_path / "glue" / "sst2" / "dev.tsv"
    path.parent.mkdir(parents=True)
    path.write_text("sentence\tlabel\ngood\t1\nbad\t7\n")
    with pytest.raises(DataError, match="unknown label '7'") as error:
        get_task("sst2").read("validation", tmp_path)
    assert f"{path}:3:" in str(error.value)


def test_missing_field_is_named(tmp_path):
    path = write_jsonl(tmp_path / "superglue" / "rte" / "val.jsonl", [{"premise": "p", "label": "entailment", "idx": 0}])
    with pytest.raises(DataError, match="missing field 'hypothesis'") as error:
        get_task("rte").read("validation", tmp_path)
    assert f"{path}:1:" in str(error.value)


def test_missing_field_in_squad_file(tmp_path):
    (tmp_path / "squad").mkdir()
    data = squad_file([("T", [("Q?", ["a"])])])
    del data["data"][0]["paragraphs"][0]["qas"][0]["question"]
    path = tmp_path / "squad" / "dev-v1.1.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="missing field 'question'") as error:
        get_task("squad").read("validation", tmp_path)
    assert str(path) in str(error.value)


def test_malformed_squad_json(tmp_path):
    (tmp_path / "squad").mkdir()
    path = tmp_path / "squad" / "dev-v1.1.json"
    path.write_text('{"data": [\n  {"title": }\n]}')
    with pytest.raises(DataError, match="malformed JSON") as error:
        get_task("squad").read("validation", tmp_path)
    assert f"{path}:2:" in str(error.value)


def test_unlabelled_test_files_are_not_splits():
    assert all(set(task.files) <= {"train", "validation"} for task in TASKS.values())
    with pytest.raises(DataError, match="no 'test' split"):
        get_task("rte").read("test", DATA_DIR)


def test_task_is_frozen():
    with pytest.raises(Exception):
        get_task("sst2").name = "other"
    assert isinstance(get_task("sst2"), Task)
