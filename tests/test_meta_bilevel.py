"""Bilevel ZOFO over many tasks (methods/meta_bilevel.py), on a tiny model and four MetaICL tasks."""

import pytest
import torch

from zofo.adapters import activate, adapter_parameters, base_parameters
from zofo.config import make_config
from zofo.data import TaskSet, metaicl_task_data
from zofo.methods.bilevel import UpperObjective
from zofo.methods.penalty import UPPER
from zofo.methods.meta_bilevel import MetaBilevelZOFO
from zofo.zo import Trajectory

from conftest import tiny

TASKS = ("ag_news", "emo", "glue-sst2", "tweet_eval-hate")


def build(data_dir, tmp_path, tasks_per_step=2, **overrides):
    values = dict(model="tiny-llama", data_dir=str(data_dir), batch_size=2, device="cpu", lr=1e-3, max_length=96,
                  bilevel_lower_lr=1e-2, bilevel_upper_lr=1e-2, bilevel_k=2, bilevel_lambda=10.0, steps=6,
                  zo_eps=1e-2, zo_perturbation="exact")
    config = make_config({**values, **overrides})
    model, tokenizer = tiny()
    tasks = TaskSet([metaicl_task_data(name, config, tokenizer, validation=4) for name in TASKS])
    tmp_path.mkdir(parents=True, exist_ok=True)
    method = MetaBilevelZOFO(model, tasks, config, Trajectory(tmp_path / "trajectory.jsonl"), tasks_per_step)
    method.begin()
    return method


def objectives(method, lam):
    """Each task's F_i with its own minibatches and adapters (after one lower level, so that z_i ≠ φ_i)."""
    found = []
    for i, data in enumerate(method.data):
        method.lower_level(i)
        ft, peft = data.train[:2], data.train[2:4]
        objective = UpperObjective(method.peft_model, data, ft, peft, lam)
        found.append(lambda i=i, objective=objective: (method.load(i), objective())[1])  # task i's φ_i and z_i
    return found


def adapter_values(method):
    """Every task's φ_i and z_i, copied."""
    return {(which, i): [v.clone() for v in values] for which, adapters in (("phi", method.phis), ("z", method.zs))
            for i, values in enumerate(adapters.values)}


def test_the_estimate_of_the_summed_objective_is_the_sum_of_the_tasks_estimates(data_dir, tmp_path):
    method = build(data_dir, tmp_path)
    parts, spsa = objectives(method, 10.0), method.zo.spsa
    total = spsa.estimate(lambda: torch.stack([f() for f in parts]).sum(), 7)
    spsa.space.restore()
    each = []
    for f in parts:
        each.append(spsa.estimate(f, 7).scalars[0])
        spsa.space.restore()
    assert total.scalars[0] == pytest.approx(sum(each), rel=1e-4, abs=1e-4)
    assert len({round(s, 6) for s in each}) == len(each)  # the tasks do contribute different terms


def test_with_lambda_zero_the_estimate_is_mezos_on_the_summed_fine_tuning_loss(data_dir, tmp_path):
    method = build(data_dir, tmp_path, bilevel_lambda=0.0)
    parts, spsa = objectives(method, 0.0), method.zo.spsa
    bilevel = spsa.estimate(lambda: torch.stack([f() for f in parts]).sum(), 3)
    spsa.space.restore()

    def summed_ft_loss():
        losses = []
        activate(method.peft_model, UPPER)
        for i, data in enumerate(method.data):
            method.phis.load(i)
            losses.append(data.loss(method.peft_model, data.train[:2]))
        return torch.stack(losses).sum()
    mezo = spsa.estimate(summed_ft_loss, 3)
    assert bilevel.scalars[0] == pytest.approx(mezo.scalars[0], rel=1e-4, abs=1e-4)


def test_an_iteration_moves_theta_and_only_the_sampled_tasks_adapters(data_dir, tmp_path):
    method = build(data_dir, tmp_path, tasks_per_step=2)
    before = adapter_values(method)
    theta = {n: p.clone() for n, p in base_parameters(method.peft_model)}
    sampled = method.sampled_tasks(1)
    assert len(sampled) == 2 and sampled == method.sampled_tasks(1)  # seeded: the same for a resumed run
    assert len({tuple(method.sampled_tasks(t)) for t in range(1, 11)}) > 1
    log = method.step(0)
    assert {"train_loss", "lower_loss", "upper_objective"} <= set(log)
    for (which, i), after in adapter_values(method).items():
        moved = any(not torch.equal(a, b) for a, b in zip(after, before[which, i]))
        assert moved == (i in sampled), (which, i)
    assert any(not torch.equal(p, theta[n]) for n, p in base_parameters(method.peft_model))
    assert [r["step"] for r in method.trajectory.read()] == [3]
    assert method.validation_loss() > 0


def test_a_method_rebuilt_from_its_start_point_and_state_continues_as_the_uninterrupted_one(data_dir, tmp_path):
    """What the run loop's resume does: restore the checkpointed step (θ from the trajectory), load the state."""
    whole = build(data_dir, tmp_path / "whole", zo_perturbation="in-place")
    for i in range(2):
        whole.step(i)
    first = build(data_dir, tmp_path / "cut", zo_perturbation="in-place")
    first.step(0)
    snapshot, state = first.snapshot(), first.state_dict()
    resumed = MetaBilevelZOFO(tiny()[0], TaskSet(first.data), first.config, first.trajectory, first.tasks_per_step)
    resumed.restore(first.schedule()[0], snapshot)
    resumed.load_state_dict(state)
    resumed.step(1)
    expected, got = adapter_values(whole), adapter_values(resumed)
    for key in expected:
        assert all(torch.equal(a, b) for a, b in zip(expected[key], got[key])), key
    theta = dict(base_parameters(resumed.peft_model))
    assert all(torch.equal(p, theta[n]) for n, p in base_parameters(whole.peft_model))


def test_the_meta_test_tunes_a_fresh_lora_per_task_and_seed_and_leaves_theta_as_it_was(data_dir):
    from zofo.meta_test import meta_test

    model, tokenizer = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tasks = ["poem_sentiment", "ai2_arc"]  # a classification task (macro-F1) and a QA task (accuracy)
    untrained = meta_test(model, tokenizer, tasks, data_dir, seeds=(13, 21), steps=0, limit=6, max_length=96)
    for result in untrained["tasks"].values():  # LoRA starts at B = 0: untuned, θ with it is θ alone
        assert result["tuned_by_seed"] == {13: result["zero_shot"], 21: result["zero_shot"]}
    assert untrained["tasks"]["poem_sentiment"]["metric"] == "macro_f1"
    assert untrained["tasks"]["ai2_arc"]["metric"] == "accuracy"
    # a fresh adapter per task and seed: seed 21 of the second task scores as it does alone; an adapter
    # carried over from the earlier task or seed would have started elsewhere
    options = dict(steps=3, lr=5e-2, limit=6, max_length=96)
    tuned = meta_test(model, tokenizer, tasks, data_dir, seeds=(13, 21), **options)
    alone = meta_test(model, tokenizer, tasks[1:], data_dir, seeds=(21,), **options)
    assert tuned["tasks"]["ai2_arc"]["tuned_by_seed"][21] == alone["tasks"]["ai2_arc"]["tuned_by_seed"][21]
    trained_away = [r["tuned_by_seed"][s] != r["zero_shot"] for r in tuned["tasks"].values() for s in (13, 21)]
    assert any(trained_away) and tuned["test_cap"] == 6
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_meta_training_runs_from_the_command_line_and_meta_tests_the_pretrained_and_the_trained_theta(data_dir, tmp_path):
    import json

    from zofo.cli import main

    out = tmp_path / "run"
    argv = ["train", "--method", "meta-bilevel", "--model", "tiny-llama", "--data-dir", str(data_dir), "--device", "cpu",
            "--meta-setting", "class_to_class", "--meta-train-tasks", "3", "--meta-test-tasks", "2",
            "--meta-tasks-per-step", "2", "--meta-test-cap", "6", "--meta-tune-steps", "2", "--meta-val-per-task", "4",
            "--steps", "6", "--bilevel-k", "2", "--eval-every", "3", "--batch-size", "2", "--max-length", "96",
            "--lr", "1e-3", "--zo-eps", "1e-2", "--out-dir", str(out)]
    with pytest.warns(UserWarning, match="tasks without their files"):
        assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["train_tasks"]) == 3 and len(metrics["test_tasks"]) == 2
    assert metrics["data"]["missing"]["train"] and metrics["data"]["setting"] == "class_to_class"
    for result in (metrics["pretrained"], metrics["meta_test"]):
        assert set(result["tasks"]) == set(metrics["test_tasks"]) and result["seeds"] == [100, 13, 21, 42, 87]
        assert all(r["test_examples"] == 6 for r in result["tasks"].values())
    assert metrics["test"]["zero_shot"] == metrics["meta_test"]["zero_shot"]
    assert metrics["best_step"] in (3, 6) and (out / "model" / "model.safetensors").exists()
    assert [r["step"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "val_loss" in r] == [3, 6]


def test_every_task_runs_through_the_same_two_adapters_whose_storage_never_moves(data_dir, tmp_path, monkeypatch):
    """CUDA graphs are keyed by the active adapter and read the weights where they were captured: so that an
    iteration replays graphs captured once, whatever the tasks, every model call uses one of two adapters and
    no parameter's storage moves (tasks' values are copied in place)."""
    method = build(data_dir, tmp_path, tasks_per_step=3)
    active, calls = [], type(method.data[0].calls)
    original = calls._call
    monkeypatch.setattr(calls, "_call", lambda self, kind, model, *a, **k: (active.append(model.active_adapter),
                                                                            original(self, kind, model, *a, **k))[1])
    storage = [p.data_ptr() for p in method.peft_model.parameters()]
    for i in range(2):
        method.step(i)
    method.validation_loss()
    assert set(active) == {"default", "lower"} and len(active) > 2 * len(TASKS)
    assert [p.data_ptr() for p in method.peft_model.parameters()] == storage


def test_its_memory_is_one_model_plus_every_tasks_adapters_and_the_visited_tasks_adam_states(data_dir, tmp_path):
    method = build(data_dir, tmp_path)
    method.step(0)
    visited = set(method.sampled_tasks(1))
    slot = adapter_parameters(method.peft_model, UPPER)
    slot_bytes = sum(p.nbytes for p in slot)
    memory = method.summary()["memory_bytes"]
    assert memory["model"] == sum(p.nbytes for p in method.peft_model.parameters())  # θ and the two slots
    assert memory["task_adapters"] == 2 * len(TASKS) * slot_bytes  # φ_i and z_i of every task
    moments = 2 * 2 * len(visited) * slot_bytes  # Adam's two moments of φ_i and z_i, sampled tasks only
    counters = 2 * len(visited) * len(slot) * torch.tensor(0.0).nbytes  # Adam's step count per parameter
    assert len(visited) == 2 and memory["task_adam_states"] == moments + counters


def test_adam_states_read_from_a_checkpoint_go_to_their_parameters_device_but_the_step_count():
    """Checkpoints load onto the CPU (runs.py); the per-task Adam states, swapped into the optimizer by reference,
    must then live where the adapter does (a GPU there; the meta device stands in for it here)."""
    from zofo.methods.meta_bilevel import TaskAdapters

    adapters = TaskAdapters.__new__(TaskAdapters)  # only the parameters' places matter here
    adapters.parameters = [torch.nn.Parameter(torch.empty(3, device="meta"))]
    adapters.load_states([{0: {"step": torch.tensor(4.0), "exp_avg": torch.ones(3), "exp_avg_sq": torch.ones(3)}}, {}])
    state = adapters.states[0][0]
    assert state["exp_avg"].device.type == state["exp_avg_sq"].device.type == "meta"
    assert state["step"].device.type == "cpu" and state["step"].item() == 4.0  # torch's Adam keeps it there
    assert adapters.states[1] == {}
