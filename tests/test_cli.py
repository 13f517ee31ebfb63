import json

import pytest

from zofo.cli import build_parser, main
from zofo.config import FIELDS, load_config


def test_help_documents_every_config_field_once(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = capsys.readouterr().out
    for flag in FIELDS:
        assert "--" + flag.replace("_", "-") in text
    assert "--config" in text and "--no-hard-prompt" in text and "--bilevel-lambda" in text
    assert text.count("(default:") == sum(info.default is not None for _, info in FIELDS.values())


def test_yaml_config_with_command_line_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("task: copa\nmethod: mezo\nsteps: 7\npeft: prefix\nhard_prompt: false\nzo:\n  eps: 1e-4\n")
    config = load_config(path, {"steps": "9", "bilevel.lambda": "1e3"})
    assert (config.data.task, config.steps, config.adapter.peft, config.data.hard_prompt) == ("copa", 9, "prefix", False)
    assert config.zo.eps == 1e-4 and isinstance(config.zo.eps, float) and config.bilevel.lam == 1000.0


def test_bad_config_names_the_field_and_allowed_values(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("task: copa\nlearning_rate: 0.1\n")
    assert main(["train", "--config", str(path)]) == 2
    assert "learning_rate" in capsys.readouterr().err
    path.write_text("peft: adapterx\n")
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "peft" in err and "'lora'" in err and str(path) in err


def test_train_then_eval_the_run_folder(tmp_path, data_dir, capsys):
    common = ["--model", "tiny-gpt2", "--task", "copa", "--data-dir", str(data_dir), "--device", "cpu"]
    out = tmp_path / "run"
    assert main(["train", *common, "--method", "fo", "--steps", "3", "--eval-every", "3", "--loss", "lm",
                 "--n-train", "8", "--n-val", "4", "--n-test", "8", "--out-dir", str(out)]) == 0
    trained = json.loads((out / "metrics.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(out), "--output", str(tmp_path / "e.json")]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated["accuracy"] == trained["test"]["accuracy"]
    assert json.loads((tmp_path / "e.json").read_text())["accuracy"] == evaluated["accuracy"]
    # the base model and the adapter given by hand, on the same test sample (it depends on the seed alone)
    assert main(["eval", *common, "--n-test", "8", "--adapter", str(out / "adapter")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["accuracy"] == trained["test"]["accuracy"]


def test_eval_of_a_run_that_trained_theta_uses_its_model_not_the_base(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "tiny-llama", "--task", "sst2", "--data-dir", str(data_dir), "--device", "cpu",
                 "--method", "bilevel", "--steps", "6", "--bilevel-k", "2", "--eval-every", "3", "--lr", "1e-2",
                 "--n-train", "12", "--n-val", "4", "--n-test", "16", "--no-zero-shot", "--out-dir", str(out)]) == 0
    trained = json.loads((out / "metrics.json").read_text())
    capsys.readouterr()
    # the adapter alone on the base model is not what the run tested: refused, with the command that is
    assert main(["eval", "--model", "tiny-llama", "--task", "sst2", "--data-dir", str(data_dir), "--device", "cpu",
                 "--adapter", str(out / "adapter")]) == 2
    assert f"zofo eval {out}" in capsys.readouterr().err
    assert main(["eval", str(out)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["accuracy"] == trained["test"]["accuracy"]


def test_missing_data_folder_is_reported_with_its_path(tmp_path, capsys):
    assert main(["eval", "--model", "tiny-llama", "--task", "rte", "--data-dir", str(tmp_path / "nowhere"),
                 "--device", "cpu"]) == 2
    assert "nowhere" in capsys.readouterr().err
