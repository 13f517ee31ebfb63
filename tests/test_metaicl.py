"""MetaICL's settings and task files (tasks/metaicl.py): the real data here, and bad inputs written by the tests."""

import json

import pytest

from zofo.errors import DataError
from zofo.tasks import metaicl


def test_the_four_settings_keep_the_tasks_whose_files_are_here_and_name_the_others(data_dir):
    # Counted from the files (issue 12): class→class 42/43 train, 15/20 test; qa→qa 21/37 and 13/22, ...
    expected = {"class_to_class": (42, 15), "non_class_to_class": (33, 15), "qa_to_qa": (21, 13),
                "non_qa_to_qa": (28, 13)}
    for name, (train, test) in expected.items():
        with pytest.warns(UserWarning, match=f"MetaICL setting {name}: tasks without their files"):
            setting = metaicl.load_setting(name, data_dir)
        assert (len(setting.train), len(setting.test)) == (train, test), name
        named = json.loads((data_dir / "metaicl" / "config" / f"{name}.json").read_text())
        assert sorted(setting.train + tuple(setting.missing.get("train", []))) == sorted(named["train"])
        assert sorted(setting.test + tuple(setting.missing.get("test", []))) == sorted(named["test"])
        assert setting.metadata()["missing"] == setting.missing


def test_a_task_becomes_multiple_choice_examples_and_demonstrations_take_four_per_class(data_dir):
    pool = metaicl.training_pool("ag_news", data_dir)
    assert 16 * 4 < len(pool) <= 16 * 4 * 10 and len({(r["input"], r["output"]) for r in pool}) == len(pool)
    first = metaicl.example(pool[0])
    assert [c for _, c in first.options] == [" Business", " Sci/Tech", " Sports", " World"]
    assert first.options[first.label][1] == " " + pool[0]["output"]
    demos = metaicl.demonstrations("ag_news", 13, data_dir)
    file = metaicl.read_task_file(metaicl.task_file(data_dir / "metaicl", "ag_news", 13, "train"))
    for label in pool[0]["options"]:  # 4 of each class, or all of a class the 16-shot file has fewer of
        in_file = sum(r["output"] == label for r in file)
        assert sum(r["output"] == label for r in demos) == min(4, in_file)
    assert metaicl.is_classification(demos) and 12 <= len(demos) <= 16
    qa_task = next(t for t in ("ai2_arc", "codah", "commonsense_qa")
                   if (data_dir / "metaicl" / "data" / t).is_dir())
    qa = metaicl.demonstrations(qa_task, 13, data_dir)
    assert not metaicl.is_classification(metaicl.read_task_file(
        metaicl.task_file(data_dir / "metaicl", qa_task, 13, "train"))) and len(qa) == 4
    capped = metaicl.test_records("ag_news", data_dir, limit=50)
    assert len(capped) == 50 and capped == metaicl.test_records("ag_news", data_dir, limit=50)


def write_task(root, lines, task="toy"):
    folder = root / "metaicl" / "data" / task
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{task}_16_100_train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("line, problem", [
    ('{"task": "toy", "input": "a", "output": "x", "options": ["x", "y"]', "malformed JSON"),
    ('{"task": "toy", "input": "a", "output": "x"}', "no 'options' field"),
    ('{"task": "toy", "input": "a", "output": "x", "options": ["x"]}', "at least two answer strings"),
    ('{"task": "toy", "input": "a", "output": "z", "options": ["x", "y"]}', "is not one of the options"),
])
def test_a_bad_task_file_names_the_file_the_line_and_the_problem(tmp_path, line, problem):
    good = '{"task": "toy", "input": "b", "output": "y", "options": ["x", "y"]}'
    path = write_task(tmp_path, [good, line])
    with pytest.raises(DataError, match=problem) as error:
        metaicl.read_task_file(path)
    assert f"{path}:2:" in str(error.value)


def test_a_missing_setting_names_the_known_ones(tmp_path, data_dir):
    with pytest.raises(DataError, match="no such MetaICL setting; known settings: .*class_to_class"):
        metaicl.load_setting("class_to_nothing", data_dir)
    (tmp_path / "metaicl" / "config").mkdir(parents=True)
    (tmp_path / "metaicl" / "config" / "broken.json").write_text('{"train": ["toy"]}')
    with pytest.raises(DataError, match="broken.json: expected"):
        metaicl.load_setting("broken", tmp_path)


def test_generation_tasks_train_on_their_output_but_cannot_be_tested(tmp_path, data_dir):
    """15 of non_class_to_class's training tasks (e.g. ade_corpus_v2-dosage) have no options: a training
    pool keeps them with the output as the one option; a test file must be multiple choice."""
    pool = metaicl.training_pool("ade_corpus_v2-dosage", data_dir)
    assert pool and all(r["options"] == [r["output"]] for r in pool)
    example = metaicl.example(pool[0])
    assert example.options == ((pool[0]["input"], " " + pool[0]["output"]),) and example.label == 0
    path = write_task(tmp_path, ['{"task": "toy", "input": "a", "output": "x", "options": []}'])
    with pytest.raises(DataError, match="a test task is multiple choice"):
        metaicl.read_task_file(path)
