"""Every file under configs/ loads, validates and runs for one step (one Bilevel cycle) on a tiny model;
and config values are typed wherever they come from."""

import argparse
import json
import sys

import pytest
import yaml

from zofo.cli import main
from zofo.config import META_METHODS, ConfigError, load_config, make_config, parse_assignments
from zofo.experiment import run_training
from zofo.sweep import expand, load_sweep

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
TINY = {"model": "tiny-llama", "device": "cpu", "dtype": "fp32", "n_train": 12, "n_val": 4, "n_test": 4,
        "batch_size": 2, "zero_shot": False, "save_model": False}


@pytest.fixture(scope="module")
def all_data(tmp_path_factory, data_dir):
    """The shared data, plus small SQuAD and DROP files (not available offline) in their official format."""
    root = tmp_path_factory.mktemp("data")
    for entry in data_dir.iterdir():
        (root / entry.name).symlink_to(entry)
    qas = lambda title: [{"id": f"{title}{i}", "question": f"Q{i}?", "answers": [{"text": f"a{i}", "answer_start": 0}]}
                         for i in range(6)]
    squad = lambda titles: {"version": "1.1", "data": [{"title": t, "paragraphs": [{"context": f"About {t}.", "qas": qas(t)}]}
                                                       for t in titles]}
    (root / "squad").mkdir()
    (root / "squad" / "train-v1.1.json").write_text(json.dumps(squad(["A", "B", "C"])))
    (root / "squad" / "dev-v1.1.json").write_text(json.dumps(squad(["D"])))
    date = {"day": "", "month": "", "year": ""}
    drop = lambda n: {f"p{i}": {"passage": f"P{i}", "qa_pairs": [{"question": "How many?", "query_id": f"q{i}",
                                                                   "answer": {"number": str(i), "date": date, "spans": []}}]}
                      for i in range(n)}
    (root / "drop").mkdir()
    (root / "drop" / "drop_dataset_train.json").write_text(json.dumps(drop(20)))
    (root / "drop" / "drop_dataset_dev.json").write_text(json.dumps(drop(8)))
    return root


def one_step(fields: dict, data_dir, out_dir) -> dict:
    """Train the config on the tiny model for one step (one cycle for Bilevel and two-stage)."""
    config = make_config(fields, TINY, {"data_dir": str(data_dir), "out_dir": str(out_dir)})
    steps = config.bilevel.k + 1 if config.method in ("bilevel", "two-stage", "meta-bilevel") else 1
    if config.method in META_METHODS:  # a few tasks and test examples of the setting
        config = config.replace(meta_train_tasks=2, meta_test_tasks=1, meta_test_cap=4, meta_tune_steps=1,
                                meta_val_per_task=4, meta_demo_max_length=128, max_length=96)
    return run_training(config.replace(steps=steps, eval_every=steps, max_new_tokens=4))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_shipped_config_loads_and_runs_one_step(path, all_data, tmp_path):
    raw = yaml.safe_load(path.read_text())
    if path.parent.name == "benchmarks":
        return run_benchmark_config(path, raw)
    if {"base", "variants", "grid"} & set(raw):  # a sweep: every run validates; one run per variant trains
        runs = expand(load_sweep(path))
        # one run per variant (what a run trains: all but its task and seed; a grid's λ or K values count as
        # variants) and per task trains, the two taken in turn: table2.yaml trains 10 of its 300 runs, each of its
        # variants and tasks once (keyed on the runs' fields but the grid's, it had trained 100: 110 s of CI)
        variants: dict[str, list[dict]] = {}
        for run in runs:
            variants.setdefault(repr({k: v for k, v in run.items() if k not in ("data.task", "seed")}), []).append(run)
        runs_by_variant = list(variants.values())
        tasks = list(dict.fromkeys(run.get("data.task") for run in runs))
        for i in range(max(len(runs_by_variant), len(tasks))):
            runs_of_variant = runs_by_variant[i % len(runs_by_variant)]
            fields = next((run for run in runs_of_variant if run.get("data.task") == tasks[i % len(tasks)]),
                          runs_of_variant[0])
            metrics = one_step(fields, all_data, tmp_path / str(i))
            assert "best_step" in metrics and metrics["test"]
        return
    config = load_config(path)
    metrics = one_step(config.to_dict(), all_data, tmp_path / "run")
    assert metrics["method"] == config.method and metrics["test"]


def run_benchmark_config(path, raw):
    if "shapes" in raw:  # benchmarks/zo_step.py's shapes: every variant, at the shape's dtype, on a tiny model
        import zo_step

        for shape in raw["shapes"]:
            assert set(shape) == {"model", "dtype", "batch", "length"}
            args = argparse.Namespace(model="tiny-llama", dtype=shape["dtype"], device="cpu", batch=2, length=8,
                                      warmup=0, iters=1)
            for variant in zo_step.VARIANTS:
                assert zo_step.measure(variant, args)["ms"] > 0
        return
    import method_step

    spec = {**method_step.load_spec(path), "model": "tiny-llama", "device": "cpu", "dtype": "fp32", "batch_size": 2,
            "length": 8, "warmup": 0, "iters": 1, "rounds": 1, "bilevel_k": 2}
    data = method_step.synthetic_data(method_step.model_config("tiny-llama").vocab_size, 2, 8)
    results = method_step.measure({"methods": ["fo-lora"], "pieces": False, **spec}, data)
    assert [r["method"] for r in results] == spec.get("methods", ["fo-lora"])


@pytest.mark.parametrize("source", ["yaml", "flag", "set"])
def test_numbers_are_numbers_wherever_they_come_from(source, tmp_path):
    # YAML 1.1 reads 1e-4 (no dot) as a string; the config's types make it a float.
    if source == "yaml":
        (tmp_path / "c.yaml").write_text("method: fo\nlr: 1e-4\nsteps: '12'\nzo: {eps: 1e-2}\n")
        config = load_config(tmp_path / "c.yaml")
    elif source == "flag":
        config = make_config({"method": "fo", "lr": "1e-4", "steps": "12", "zo_eps": "1e-2"})
    else:
        config = make_config({"method": "fo"}, parse_assignments(["lr=1e-4", "steps=12", "zo.eps=1e-2"]))
    assert (config.lr, config.steps, config.zo.eps) == (1e-4, 12, 1e-2)
    assert type(config.lr) is float and type(config.steps) is int


def test_the_three_spellings_of_a_field_are_one_field(tmp_path):
    nested = make_config({"bilevel": {"lambda": 100, "k": 3}, "zo": {"eps": 0.01}})
    dotted = make_config({"bilevel.lambda": 100, "bilevel.k": 3, "zo.eps": 0.01})
    flags = make_config({"bilevel_lambda": 100, "bilevel_k": 3, "zo_eps": 0.01})
    assert nested == dotted == flags
    assert nested.to_dict()["bilevel"]["lambda"] == 100.0
    assert make_config(nested.to_dict()) == nested  # a saved config.yaml loads back to the same config


@pytest.mark.parametrize("fields, message", [
    ({"steps": "six"}, "'steps' (--steps) = 'six': Input should be a valid integer"),
    ({"steps": 0}, "greater than or equal to 1"),
    ({"lr": -1}, "'lr' (--lr) = -1"),
    ({"batch_size": 0}, "'batch_size' (--batch-size) = 0"),
    ({"eval_every": 0}, "'eval_every' (--eval-every) = 0"),
    ({"zo_eps": 0}, "'zo.eps' (--zo-eps) = 0: Input should be greater than 0"),
    ({"peft": "adapterx"}, "'none', 'lora', 'prefix' or 'prompt'"),
    ({"task": "sst3"}, "known tasks: sst2"),
    ({"device": "gpu"}, "'device' (--device) = 'gpu'"),
    ({"learning_rate": 0.1}, "unknown config field 'learning_rate'"),
    ({"bilevel_lamda": 1}, "did you mean 'bilevel_lambda'"),
    ({"method": "bilevel", "steps": 6}, "needs steps >= bilevel.k + 1 = 11"),
    ({"method": "fo", "peft": "none"}, "set --peft lora, prefix or prompt"),
    ({"task": "squad", "loss": "candidates"}, "its loss must be 'lm'"),
    ({"resume": True, "overwrite": True}, "exclude each other"),
])
def test_bad_values_name_the_field_the_value_and_what_is_allowed(fields, message):
    with pytest.raises(ConfigError, match=None) as error:
        make_config(fields, where="x.yaml: ")
    assert message in str(error.value) and str(error.value).startswith("x.yaml: ")


def test_unparsable_yaml_names_the_file_and_line(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("method: fo\nlr: [1e-4\n")
    assert main(["train", "--config", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err
    assert "c.yaml: not valid YAML at line" in err and "Traceback" not in err
    (tmp_path / "s.yaml").write_text("grid: {seed: [0, 1}\n")
    assert main(["sweep", str(tmp_path / "s.yaml")]) == 2
    assert "s.yaml: not valid YAML" in capsys.readouterr().err
