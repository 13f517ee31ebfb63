import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from zofo.adapters import adapter_parameters, base_parameters, load_adapter
from zofo.config import make_config
from zofo.data import prepare_tasks
from zofo.experiment import run_training
from zofo.losses import loss_function
from zofo.methods.bilevel import LOWER, UPPER, BilevelZOFO, UpperObjective
from zofo.records import read_records
from zofo.zo import Trajectory

from conftest import tiny


def small_config(data_dir, tmp_path, **overrides):
    values = dict(model="tiny-llama", task="sst2", data_dir=str(data_dir), n_train=30, n_val=8, n_test=8,
                  batch_size=4, device="cpu", lr=1e-3, bilevel_lower_lr=1e-2, bilevel_upper_lr=1e-2, bilevel_k=2,
                  bilevel_lambda=10.0, out_dir=str(tmp_path / "run"))
    return make_config({**values, **overrides})


def build(config, tmp_path):
    """A Bilevel ZOFO method at its start point on a tiny model, and its one task's data."""
    model, tokenizer = tiny()
    tasks = prepare_tasks(config, tokenizer)
    trajectory = Trajectory(tmp_path / f"trajectory-{len(list(tmp_path.glob('trajectory-*')))}.jsonl")
    method = BilevelZOFO(model, tasks, config, trajectory)
    method.begin()
    return method, tasks.single


def snapshot(params):
    return [p.detach().clone() for p in params]


def moved(before, params):
    return any(not torch.equal(a, p) for a, p in zip(before, params))


def test_training_sample_splits_one_to_two_disjointly(data_dir, tmp_path):
    config = small_config(data_dir, tmp_path, n_train=999)
    data = prepare_tasks(config, tiny()[1]).single
    ft, peft = data.split(seed=3)
    assert len(ft) == 333 and len(peft) == 666
    ids = lambda examples: {id(e) for e in examples}
    assert ids(ft).isdisjoint(ids(peft)) and ids(ft) | ids(peft) == ids(data.train)
    assert data.split(seed=3) == (ft, peft) and data.split(seed=4) != (ft, peft)


@pytest.mark.parametrize("peft", ["lora", "prefix", "prompt"])
def test_z_moves_only_in_lower_steps_and_phi_theta_only_in_upper_steps(data_dir, tmp_path, peft):
    config = small_config(data_dir, tmp_path, peft=peft)
    method, data = build(config, tmp_path)
    phi, z = adapter_parameters(method.model, UPPER), adapter_parameters(method.model, LOWER)
    theta = [p for _, p in base_parameters(method.model)]
    assert phi and z and len(phi) == len(z)
    assert all(torch.equal(a, b) for a, b in zip(phi, z)), "φ and z start from the same values"

    before = snapshot(phi), snapshot(z), snapshot(theta)
    method.lower_level([data.train[:4]])
    assert moved(before[1], z) and not moved(before[0], phi) and not moved(before[2], theta)
    assert method.model.active_adapter == UPPER

    before = snapshot(phi), snapshot(z), snapshot(theta)
    method.upper_step(data.train[:4], data.train[4:8], seed=1, step=3)
    assert moved(before[0], phi) and moved(before[2], theta) and not moved(before[1], z)
    assert method.model.active_adapter == UPPER


def test_an_upper_cycle_switches_adapters_four_times(data_dir, tmp_path):
    # peft's set_adapter walks every module: K lower steps switch to z and back once, and F's two
    # evaluations begin with whichever adapter the previous one left active.
    config = small_config(data_dir, tmp_path)
    method, data = build(config, tmp_path)
    switches = []
    set_adapter = method.model.set_adapter
    method.model.set_adapter = lambda name, *args, **kwargs: (switches.append(name), set_adapter(name, *args, **kwargs))
    method.lower_level([data.train[8:12]] * 3)
    method.upper_step(data.train[:4], data.train[4:8], seed=1, step=3)
    assert switches == [LOWER, UPPER, LOWER, UPPER] and method.model.active_adapter == UPPER

    method.zo.spsa.two_sided, method.zo.spsa.q = False, 2  # three evaluations of F: φ is made active again
    method.upper_step(data.train[:4], data.train[4:8], seed=2, step=6)
    assert method.model.active_adapter == UPPER


def test_with_lambda_zero_the_theta_estimate_is_mezos_on_the_ft_loss(data_dir, tmp_path):
    config = small_config(data_dir, tmp_path, bilevel_lambda=0.0, zo_perturbation="exact")
    method, data = build(config, tmp_path)
    method.lower_level([data.train[8:12]])  # z ≠ φ, so the penalty terms would matter if λ did
    ft, peft = data.train[:4], data.train[4:8]
    spsa = method.zo.spsa
    bilevel = spsa.estimate(UpperObjective(method.peft_model, data, ft, peft, 0.0), 7)
    spsa.space.restore()  # θ back from its kept copy (exact perturbation)
    mezo = spsa.estimate(lambda: data.loss(method.model, ft), 7)
    spsa.space.restore()
    assert bilevel.seeds == mezo.seeds
    assert bilevel.scalars[0] == pytest.approx(mezo.scalars[0], rel=1e-3, abs=1e-4)

    # With λ > 0 the penalty enters: F differs from L_FT.
    penalised = UpperObjective(method.peft_model, data, ft, peft, 10.0)
    ft_loss, p_loss, z_loss = penalised.losses()
    assert penalised().item() == pytest.approx((ft_loss + 10 * (p_loss - z_loss)).item())
    assert p_loss.item() != pytest.approx(z_loss.item())


def test_both_layouts_of_f_give_the_same_three_losses(data_dir, tmp_path):
    config = small_config(data_dir, tmp_path)
    method, data = build(config, tmp_path)
    for _ in range(2):
        method.lower_level([data.train[8:12]])
    ft, peft = data.train[:4], data.train[4:8]
    together = torch.stack(UpperObjective(method.peft_model, data, ft, peft, 10.0).losses())
    separate = torch.stack(UpperObjective(method.peft_model, data, ft, peft, 10.0, separate=True).losses())
    torch.testing.assert_close(separate, together, atol=1e-5, rtol=1e-5)


def test_bilevel_run_saves_theta_for_transformers_and_phi_for_peft(data_dir, tmp_path):
    config = small_config(data_dir, tmp_path, method="bilevel", steps=12, eval_every=3, zero_shot=False)
    metrics = run_training(config)
    folder = tmp_path / "run"
    assert metrics["upper_steps"] == 4 and metrics["split"] == {"ft": 10, "peft": 20}
    assert metrics["forward_passes_per_upper_cycle"] == 2 + 2 + 2 * 3  # K lower, φ's two, F twice
    theta = AutoModelForCausalLM.from_pretrained(folder / "model")  # plain transformers, no adapter inside
    assert not any("lora" in name for name, _ in theta.named_parameters())
    base, tokenizer = tiny()
    assert any(not torch.equal(a, b) for a, b in zip(theta.parameters(), base.parameters())), "θ was trained"
    model = PeftModel.from_pretrained(theta, folder / "adapter").eval()
    reloaded = prepare_tasks(config, tokenizer).validation_loss(model)
    assert reloaded == pytest.approx(metrics["best_val_loss"], rel=1e-5)
    steps = [r["step"] for r in map(json.loads, (folder / "log.jsonl").read_text().splitlines()) if "train_loss" in r]
    assert steps == [3, 6, 9, 12]


def test_two_stage_tunes_the_prompt_then_theta_with_matched_step_counts(data_dir, tmp_path):
    config = small_config(data_dir, tmp_path, method="two-stage", peft="prompt", steps=12, eval_every=3, zero_shot=False)
    metrics = run_training(config)
    folder = tmp_path / "run"
    assert metrics["stage_steps"] == [8, 4]  # T = 12 // (K + 1) = 4 upper steps, T·K = 8 first-order steps
    records = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train_loss" in r] == list(range(1, 13))
    assert len((folder / "trajectory.jsonl").read_text().splitlines()) == 1 + 4  # the header, 4 upper steps
    theta = AutoModelForCausalLM.from_pretrained(folder / "model")
    model = load_adapter(theta, folder / "adapter")  # peft's loader, and positions that skip left padding
    _, tokenizer = tiny()
    assert prepare_tasks(config, tokenizer).validation_loss(model) == pytest.approx(metrics["best_val_loss"], rel=1e-5)


def test_phi_gradient_is_the_gradient_of_the_ft_loss_plus_lambda_times_the_peft_loss(data_dir, tmp_path):
    config = small_config(data_dir, tmp_path, bilevel_lambda=3.0)
    method, data = build(config, tmp_path)
    phi = adapter_parameters(method.model, UPPER)
    for p in adapter_parameters(method.model, UPPER):  # LoRA B starts at 0: move φ off it
        torch.nn.init.normal_(p, std=0.1)
    ft, peft = data.train[:4], data.train[4:8]
    loss_fn = loss_function(data.loss_name)
    reference = loss_fn(method.model, data.batch(ft)) + 3.0 * loss_fn(method.model, data.batch(peft))
    expected = torch.autograd.grad(reference, phi)
    method.phi_gradient(ft, peft)
    for p, g in zip(phi, expected):
        torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-5)
    assert all(p.grad is None for p in adapter_parameters(method.model, LOWER))


def rows_forwarded(model) -> list[int]:
    """Rows of every forward through the model's embeddings, appended as they happen."""
    rows = []
    model.get_input_embeddings().register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    return rows


@pytest.mark.parametrize("order, one_sided", [("phi-first", False), ("same-point", True), ("same-point", False)])
def test_forward_passes_per_upper_cycle_counts_the_rows_forwarded(data_dir, tmp_path, order, one_sided):
    config = small_config(data_dir, tmp_path, bilevel_order=order, zo_one_sided=one_sided)
    method, data = build(config, tmp_path)
    rows = rows_forwarded(method.model)
    method.lower_level([data.train[8:12]] * config.bilevel.k)
    method.upper_step(data.train[:4], data.train[4:8], seed=1, step=3)
    # SST-2: 2 candidate rows per example, 4 examples per minibatch
    assert sum(rows) == method.forward_passes_per_upper_cycle() * 4 * 2
    assert method.forward_passes_per_upper_cycle() == {("phi-first", False): 10, ("same-point", True): 8,
                                                       ("same-point", False): 10}[(order, one_sided)]


def test_same_point_estimates_theta_at_the_old_phi_and_reuses_phi_s_losses_for_f_at_theta(data_dir, tmp_path):
    # Two identical methods: one runs the upper step, the other recomputes every piece at the same point.
    config = small_config(data_dir, tmp_path, bilevel_order="same-point", zo_one_sided=True, zo_perturbation="exact")
    methods = []
    for _ in range(2):
        method, data = build(config, tmp_path)
        methods.append(method)
        for p in adapter_parameters(methods[-1].model, UPPER):  # LoRA B starts at 0: move φ off it
            torch.nn.init.normal_(p, std=0.1, generator=torch.Generator().manual_seed(p.numel()))
        methods[-1].lower_level([data.train[8:12]])
    method, reference = methods
    ft, peft = data.train[:4], data.train[4:8]

    expected = reference.zo.spsa.estimate(UpperObjective(reference.peft_model, data, ft, peft, 10.0), 5)  # at the old φ
    reference.zo.space.restore()  # exactly θ again (exact perturbation)
    reference.phi_gradient(ft, peft)
    reference.phi_update()
    _, _, estimate = method.upper_step(ft, peft, seed=5, step=3)
    assert estimate.scalars[0] == pytest.approx(expected.scalars[0], rel=1e-4, abs=1e-4)
    assert estimate.losses == pytest.approx(expected.losses, rel=1e-5)
    for a, b in zip(adapter_parameters(method.model, UPPER), adapter_parameters(reference.model, UPPER)):
        torch.testing.assert_close(a, b)  # φ's update does not depend on the order

    # phi-first would have estimated F at the new φ: a different number
    at_new_phi = reference.zo.spsa.estimate(UpperObjective(reference.peft_model, data, ft, peft, 10.0), 5)
    assert at_new_phi.losses[0] != pytest.approx(expected.losses[0], rel=1e-6)


def test_zofo_replay_rebuilds_a_bilevel_run_s_theta_on_the_plain_model(data_dir, tmp_path):
    # θ's directions are keyed by the names of the plain model, so the trajectory, written with adapters
    # attached, replays onto the model without them: bit-identical to the saved θ.
    from safetensors.torch import load_file

    from zofo.cli import main

    config = small_config(data_dir, tmp_path, method="bilevel", steps=12, eval_every=3, zero_shot=False)
    metrics = run_training(config)
    assert main(["replay", str(tmp_path / "run"), "--output", str(tmp_path / "replayed")]) == 0
    saved, replayed = (load_file(folder / "model.safetensors") for folder in (tmp_path / "run" / "model", tmp_path / "replayed"))
    assert saved.keys() == replayed.keys()
    assert all(torch.equal(saved[k].view(torch.uint8), replayed[k].view(torch.uint8)) for k in saved)
    assert metrics["best_step"] in (3, 6, 9, 12)


def test_many_named_adapter_pairs_train_apart_on_one_theta(data_dir, tmp_path):
    # What multi-task methods stand on: a task set of several tasks and one (φ_i, z_i) pair per task.
    from zofo.adapters import activate, adapter_state, with_adapters
    from zofo.config import AdapterConfig

    config = small_config(data_dir, tmp_path, n_train=8)
    model, tokenizer = tiny()
    tasks = prepare_tasks(config, tokenizer, ["sst2", "copa", "rte"])
    assert [data.name for data in tasks] == ["sst2", "copa", "rte"] and len(tasks) == 3
    with pytest.raises(ValueError, match="one task, got 3"):
        tasks.single
    names = [f"{data.name}_{level}" for data in tasks for level in ("phi", "z")]
    model = with_adapters(model, AdapterConfig(peft="lora"), names, seed=0)
    theta = {n: p.clone() for n, p in base_parameters(model)}
    before = {name: adapter_state(model, name) for name in names}
    for data in tasks:  # one first-order step on each task's z, with its own data
        activate(model, f"{data.name}_z")
        params = adapter_parameters(model, f"{data.name}_z")
        optimizer = torch.optim.Adam(params, lr=1e-2)
        loss_function(data.loss_name)(model, data.batch(data.train[:4])).backward()
        optimizer.step()
    for name in names:
        moved = any(not torch.equal(a, b) for a, b in zip(before[name].values(), adapter_state(model, name).values()))
        assert moved == name.endswith("_z"), name
    assert all(torch.equal(p, theta[n]) for n, p in base_parameters(model))
    assert tasks.validation_loss(model) == pytest.approx(sum(d.validation_loss(model) for d in tasks) / 3)


def test_the_authors_cycles_take_k_then_k_minus_one_lower_steps_and_may_end_on_lower_steps(data_dir, tmp_path):
    config = small_config(data_dir, tmp_path, bilevel_k=3, steps=12, bilevel_cycle="authors")
    method, _ = build(config, tmp_path)
    assert method.schedule() == [4, 7, 10, 12]
    assert [method.cycle(i) for i in range(4)] == [(3, True), (2, True), (2, True), (2, False)]
    logs = [method.step(i) for i in range(4)]
    assert "train_loss" not in logs[-1] and "lower_loss" in logs[-1]
    assert [r["step"] for r in method.trajectory.read()] == [4, 7, 10]  # one ZO step per upper step
    paper = small_config(data_dir, tmp_path, bilevel_k=3, steps=12)
    assert build(paper, tmp_path)[0].schedule() == [4, 8, 12]


def test_shared_optimizer_uses_one_learning_rate_and_needs_zo_adam(data_dir, tmp_path):
    from zofo.errors import ConfigError

    with pytest.raises(ConfigError, match="zo-adam"):
        small_config(data_dir, tmp_path, bilevel_optimizer="shared")
    config = small_config(data_dir, tmp_path, bilevel_optimizer="shared", zo_optimizer="zo-adam", lr=3e-4)
    method, _ = build(config, tmp_path)
    assert method.phi_optimizer.param_groups[0]["lr"] == method.zo.optimizer.lr == 3e-4


@pytest.mark.parametrize("evaluated", ["upper", "lower"])
def test_a_run_selects_and_saves_the_evaluated_adapter_and_tests_the_other_and_theta_alone(data_dir, tmp_path, evaluated):
    config = small_config(data_dir, tmp_path, steps=9, eval_every=3, zero_shot=False, bilevel_eval_adapter=evaluated)
    metrics = run_training(config)
    other = "test_theta_z" if evaluated == "upper" else "test_theta_phi"
    assert set(metrics) >= {"test", other, "test_theta_alone"} and metrics["evaluated_adapter"] == evaluated
    folder = tmp_path / "run"
    theta = AutoModelForCausalLM.from_pretrained(folder / "model")
    saved = load_adapter(theta, folder / "adapter")  # the evaluated adapter, under peft's default name
    _, tokenizer = tiny()
    tasks = prepare_tasks(config, tokenizer)
    assert tasks.validation_loss(saved) == pytest.approx(metrics["best_val_loss"], rel=1e-5)
    assert tasks.test_metrics(saved, tokenizer) == metrics["test"]
    with saved.disable_adapter():
        assert tasks.test_metrics(saved, tokenizer) == metrics["test_theta_alone"]
    # each evaluation also logs the other adapter's validation loss and each adapter's first-order steps so far
    other_loss = "val_loss_theta_z" if evaluated == "upper" else "val_loss_theta_phi"
    evaluations = [r for r in read_records(folder / "log.jsonl") if "val_loss" in r]
    assert [(r["step"], r["lower_steps"], r["upper_steps"]) for r in evaluations] == [(3, 2, 1), (6, 4, 2), (9, 6, 3)]
    assert all(r[other_loss] > 0 and r[other_loss] != r["val_loss"] for r in evaluations)


def test_a_collapse_of_the_adapter_not_selected_on_is_logged_and_the_run_goes_on(data_dir, tmp_path, monkeypatch):
    """θ+z's validation loss is logged for comparison; only θ+φ's (the one that selects) collapsing stops a run."""
    from zofo.data import TaskSet
    from zofo.errors import ModelCollapsed

    measure = TaskSet.validation_loss

    def lower_collapsed(tasks, model):
        if model.active_adapter == LOWER:
            raise ModelCollapsed("the model collapsed")
        return measure(tasks, model)

    monkeypatch.setattr(TaskSet, "validation_loss", lower_collapsed)
    metrics = run_training(small_config(data_dir, tmp_path, steps=6, eval_every=3, zero_shot=False, test=False))
    evaluations = [r for r in read_records(tmp_path / "run" / "log.jsonl") if "val_loss" in r]
    assert [r["step"] for r in evaluations] == [3, 6] and all(r["val_loss_theta_z"] is None for r in evaluations)
    assert metrics["best_val_loss"] == min(r["val_loss"] for r in evaluations)  # θ+φ's, measured with φ active


@pytest.mark.parametrize("cycle", ["paper", "authors"])
def test_evaluating_both_adapters_leaves_training_as_it_is(data_dir, tmp_path, cycle):
    """θ's steps (the trajectory: seeds and scalars, which depend on φ and z through F) are the same whether a run
    evaluates often or only at its end: evaluation switches adapters and forwards, and moves nothing. Each
    evaluation counts every step once, as a lower or an upper step."""
    trajectories = []
    for every in (2, 9):
        folder = tmp_path / str(every)
        run_training(small_config(data_dir, folder, steps=9, eval_every=every, zero_shot=False, test=False,
                                  bilevel_cycle=cycle))
        trajectories.append((folder / "run" / "trajectory.jsonl").read_text())
        evaluations = [r for r in read_records(folder / "run" / "log.jsonl") if "val_loss" in r]
        assert evaluations and all(r["lower_steps"] + r["upper_steps"] == r["step"] for r in evaluations)
    upper_steps = 3 if cycle == "paper" else 4  # paper: cycles of K + 1 = 3 steps; authors: 3, then 2 each
    assert trajectories[0] == trajectories[1] and trajectories[0].count("\n") == 1 + upper_steps  # header + steps
