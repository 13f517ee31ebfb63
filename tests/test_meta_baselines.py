"""The meta-training baselines of the paper's Table 4 (issue 12, point 4): in-context learning, MetaICL
(first-order full fine-tuning with demonstrations) and MeZO meta-training, on a tiny model."""

import json

import pytest
import torch

from zofo.config import make_config
from zofo.data import PER_CLASS, TaskSet, metaicl_task_data
from zofo.meta_test import meta_test
from zofo.methods.meta_icl import MetaICL
from zofo.methods.meta_mezo import MetaMeZO
from zofo.tasks import metaicl
from zofo.zo import Trajectory

from conftest import tiny

TASKS = ("ag_news", "glue-sst2", "ai2_arc")


def test_demonstrations_are_input_output_pairs_before_the_input():
    record = {"task": "t", "input": "Is it good?", "output": "yes", "options": ["yes", "no"]}
    shown = [{"input": "a", "output": "yes"}, {"input": "b", "output": "no"}]
    assert metaicl.with_demonstrations(record, shown)["input"] == "a yes\n\nb no\n\nIs it good?"
    assert metaicl.with_demonstrations(record, [])["input"] == record["input"]


def test_a_training_input_shows_per_class_examples_of_its_own_task_never_itself(data_dir):
    pool = metaicl.training_pool("glue-sst2", data_dir)[:40]
    shown = metaicl.with_own_demonstrations(pool, per_class=2, seed=0)
    for record, prompt in zip(pool, shown):
        blocks = prompt["input"].split("\n\n")
        assert blocks[-1] == record["input"] and len(blocks) == 1 + 2 * len(set(record["options"]))
        assert f"{record['input']} {record['output']}" not in blocks[:-1]
        outputs = [b.rsplit(" ", 1)[1] for b in blocks[:-1]]
        assert sorted(outputs) == sorted(record["options"] * 2)  # two of each class
    assert shown == metaicl.with_own_demonstrations(pool, per_class=2, seed=0)  # seeded
    assert shown != metaicl.with_own_demonstrations(pool, per_class=2, seed=1)


def config_for(data_dir, **values):
    return make_config({**dict(model="tiny-llama", data_dir=str(data_dir), batch_size=2, device="cpu", lr=1e-3,
                               max_length=96, steps=4, zo_eps=1e-2, meta_tasks_per_step=2, meta_demo_max_length=256),
                        **values})


def test_meta_icl_trains_theta_on_inputs_with_demonstrations(data_dir, tmp_path):
    config = config_for(data_dir, method="meta-icl")
    model, tokenizer = tiny()
    plain = metaicl_task_data("glue-sst2", config, tokenizer, validation=4)
    data = metaicl_task_data("glue-sst2", config, tokenizer, validation=4, demonstrations=True)
    assert len(data.train) == len(plain.train) and len(data.validation) == 4
    assert min(e.length for e in data.train) > max(e.length for e in plain.train)  # PER_CLASS per class before each
    assert PER_CLASS == 4
    tasks = TaskSet([metaicl_task_data(n, config, tokenizer, validation=4, demonstrations=True) for n in TASKS])
    method = MetaICL(model, tasks, config, Trajectory(tmp_path / "t.jsonl"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    snapshot = method.snapshot()
    losses = [float(method.step(i)["train_loss"]) for i in range(4)]
    assert all(not torch.equal(v, before[k]) for k, v in model.state_dict().items())  # every weight of θ moves
    method.restore(0, snapshot)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(loss > 0 for loss in losses)


def test_meta_mezo_moves_theta_by_one_estimate_of_the_sampled_tasks_summed_loss(data_dir, tmp_path):
    from zofo.zo import mix

    config = config_for(data_dir, method="meta-mezo", zo_perturbation="exact")
    model, tokenizer = tiny()
    tasks = TaskSet([metaicl_task_data(n, config, tokenizer, validation=4) for n in TASKS])
    method = MetaMeZO(model, tasks, config, Trajectory(tmp_path / "t.jsonl"))
    method.begin()
    sampled = method.sampled_tasks(1)
    assert len(sampled) == 2 and sampled == method.sampled_tasks(1)
    # the minibatches step 1 will draw, the samplers put back afterwards
    states = [s.state_dict() for s in method.samplers]
    batches = [(method.data[i], method.data[i].batch(method.samplers[i].next())) for i in sampled]
    for sampler, state in zip(method.samplers, states):
        sampler.load_state_dict(state)
    spsa, seed = method.zo.spsa, mix(config.seed, 1)
    summed = spsa.estimate(lambda: torch.stack([d.batch_loss(method.model, b) for d, b in batches]).sum(), seed)
    spsa.space.restore()
    each = []
    for d, b in batches:
        each.append(spsa.estimate(lambda: d.batch_loss(method.model, b), seed).scalars[0])
        spsa.space.restore()
    assert summed.scalars[0] == pytest.approx(sum(each), rel=1e-4, abs=1e-4)
    assert len({round(x, 6) for x in each}) == 2  # both tasks contribute

    before = [p.clone() for p in model.parameters()]
    method.step(0)
    logged = json.loads((tmp_path / "t.jsonl").read_text().splitlines()[-1])
    assert logged["seed"] == seed and logged["scalars"][0] == pytest.approx(summed.scalars[0], rel=1e-6)
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_the_meta_test_predicts_in_context_with_each_seeds_demonstrations(data_dir, monkeypatch):
    shown_with = []
    real = metaicl.with_demonstrations
    monkeypatch.setattr(metaicl, "with_demonstrations", lambda r, d: shown_with.append((r["task"], d)) or real(r, d))
    model, tokenizer = tiny()
    torch.manual_seed(0)
    options = dict(limit=6, max_length=96, demo_max_length=512, steps=0)
    with pytest.raises(ValueError, match="meta-test modes"):
        meta_test(model, tokenizer, ["glue-sst2"], data_dir, modes=("zero_shot", "few_shot"), **options)
    results = meta_test(model, tokenizer, ["glue-sst2", "ai2_arc"], data_dir, seeds=(13, 21), modes=("icl",), **options)
    assert results["modes"] == ["icl"] and "zero_shot" not in results and "tuned" not in results
    for task in results["tasks"].values():
        assert set(task["icl_by_seed"]) == {13, 21} and task["icl"] == pytest.approx(sum(task["icl_by_seed"].values()) / 2)
    per_seed = [sum(t["icl_by_seed"][s] for t in results["tasks"].values()) / 2 for s in (13, 21)]
    assert results["icl"] == pytest.approx(sum(per_seed) / 2)
    # every test input (6 a task) of each seed is shown that seed's 4 examples per class (QA: 4)
    assert len(shown_with) == 2 * 2 * 6
    for seed, start in ((13, 0), (21, 6)):
        expected = metaicl.demonstrations("glue-sst2", seed, data_dir)
        assert len(expected) == 8 and {r["output"] for r in expected} == set(expected[0]["options"])
        assert all(d == expected for _, d in shown_with[start:start + 6])
    assert all(len(d) == 4 for task, d in shown_with if task == "ai2_arc")


def test_the_baselines_run_from_the_command_line_and_report_as_table_4(data_dir, tmp_path):
    from zofo.cli import main

    common = ["train", "--model", "tiny-llama", "--data-dir", str(data_dir), "--device", "cpu",
              "--meta-setting", "class_to_class", "--meta-train-tasks", "3", "--meta-test-tasks", "2",
              "--meta-tasks-per-step", "2", "--meta-test-cap", "6", "--meta-tune-steps", "2", "--meta-val-per-task", "4",
              "--steps", "4", "--eval-every", "2", "--batch-size", "2", "--max-length", "96", "--meta-demo-max-length",
              "256", "--lr", "1e-3", "--zo-eps", "1e-2"]
    for method in ("meta-mezo", "meta-icl"):
        with pytest.warns(UserWarning, match="tasks without their files"):
            assert main(common + ["--method", method, "--out-dir", str(tmp_path / "runs" / method)]) == 0
    mezo, icl = (json.loads((tmp_path / "runs" / m / "metrics.json").read_text()) for m in ("meta-mezo", "meta-icl"))
    assert set(mezo["test"]) == {"zero_shot", "tuned", "tuned_std_over_seeds"}
    assert set(icl["test"]) == {"zero_shot", "icl", "icl_std_over_seeds"}
    assert set(mezo["pretrained"]["modes"]) == {"zero_shot", "tuned", "icl"}  # the pretrained model's three baselines
    assert (tmp_path / "runs" / "meta-icl" / "model" / "model.safetensors").exists()

    assert main(["report", str(tmp_path / "runs"), "--output", str(tmp_path / "report")]) == 0
    table = (tmp_path / "report" / "table.md").read_text()
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    labels = [(r[0].strip("| "), r[2]) for r in rows[1:]]
    assert labels == [("pretrained", "zero-shot"), ("pretrained", "icl"), ("pretrained", "tuned"),
                      ("meta-icl", "zero-shot"), ("meta-icl", "icl"), ("meta-mezo", "zero-shot"), ("meta-mezo", "tuned")]
    icl_cell = next(r for r in rows if r[0] == "| meta-icl" and r[2] == "icl")[3]
    assert icl_cell.startswith(f"{100 * icl['test']['icl']:.1f} ± {100 * icl['test']['icl_std_over_seeds']:.1f}")
