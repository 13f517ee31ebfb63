import json

import pytest

from zofo.cli import build_parser, main
from zofo.config import config_fields, load_config


def test_help_documents_every_config_field(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = capsys.readouterr().out
    for field in config_fields():
        assert "--" + field.name.replace("_", "-") in text
    assert "--config" in text and "--no-hard-prompt" in text


def test_yaml_config_with_command_line_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("task: copa\nsteps: 7\npeft: prefix\nhard_prompt: false\n")
    config = load_config(path, steps=9)
    assert (config.task, config.steps, config.peft, config.hard_prompt) == ("copa", 9, "prefix", False)


def test_bad_config_names_the_field_and_allowed_values(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("task: copa\nlearning_rate: 0.1\n")
    assert main(["train", "--config", str(path)]) == 2
    assert "learning_rate" in capsys.readouterr().err
    path.write_text("peft: adapterx\n")
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "peft" in err and "'lora'" in err


def test_train_then_eval_the_saved_adapter(tmp_path, data_dir, capsys):
    common = ["--model", "tiny-gpt2", "--task", "copa", "--data-dir", str(data_dir), "--device", "cpu",
              "--n-train", "8", "--n-val", "4", "--n-test", "8"]
    out = tmp_path / "run"
    assert main(["train", *common, "--method", "fo", "--steps", "3", "--eval-every", "3", "--loss", "lm", "--out-dir", str(out)]) == 0
    trained = json.loads((out / "metrics.json").read_text())
    capsys.readouterr()
    assert main(["eval", *common, "--adapter", str(out / "adapter"), "--output", str(tmp_path / "e.json")]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated["accuracy"] == trained["test"]["accuracy"]
    assert json.loads((tmp_path / "e.json").read_text())["accuracy"] == evaluated["accuracy"]


def test_missing_data_folder_is_reported_with_its_path(tmp_path, capsys):
    assert main(["eval", "--model", "tiny-llama", "--task", "rte", "--data-dir", str(tmp_path / "nowhere"),
                 "--device", "cpu"]) == 2
    assert "nowhere" in capsys.readouterr().err
