"""The zeroth-order engine: directions, SPSA, the optimizers, numerics."""

import pytest
import torch

from zofo.zo import SPSA, ParameterSpace, Trajectory, ZOAdam, ZOSGD, ZOSignSGD, is_decayed, mix, replay
from zofo.zo.space import TORCH_BLOCK

from conftest import tiny


def lm_objective(model, tokenizer, text="The quick brown fox jumps over the lazy dog."):
    inputs = tokenizer([text], return_tensors="pt")
    return lambda: model(**inputs, labels=inputs["input_ids"]).loss


def snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def direction_of(space: ParameterSpace, seed: int) -> torch.Tensor:
    """u(seed) materialised over the whole space (tests only: the engine never does this)."""
    return torch.cat([space.direction(seed, s) for s in space.segments])


def directions_by_name(space: ParameterSpace, seed: int) -> dict[str, torch.Tensor]:
    return {s.name: space.direction(seed, s) for s in space.segments}


def flat_params(space: ParameterSpace) -> torch.Tensor:
    return torch.cat([space.view(s).detach().float().clone() for s in space.segments])


def test_directions_are_regenerated_identically_and_differ_between_seeds():
    model, _ = tiny()
    space = ParameterSpace(model.named_parameters())
    u = direction_of(space, 7)
    assert torch.equal(u, direction_of(space, 7))
    assert not torch.equal(u, direction_of(space, 8))
    assert u.numel() == space.numel == sum(p.numel() for p in model.parameters())
    assert abs(u.mean().item()) < 0.02 and abs(u.std().item() - 1) < 0.02
    assert mix(1, 2) != mix(2, 1)


@pytest.mark.parametrize("kernel", ["torch", "triton"])
def test_a_parameter_s_direction_depends_on_its_name_not_on_the_packing(kernel):
    if kernel == "triton":
        pytest.importorskip("triton", reason="triton is a dev dependency on Linux x86_64")
    model, _ = tiny()
    alone = directions_by_name(ParameterSpace(model.named_parameters(), pack=False, kernel=kernel), 5)
    several = ParameterSpace(model.named_parameters(), bucket_numel=20_000, kernel=kernel)
    one = ParameterSpace(model.named_parameters(), bucket_numel=1 << 30, kernel=kernel)
    assert len(several.buckets) > 2 and len(one.buckets) == 1
    reordered = ParameterSpace(list(model.named_parameters())[::-1], kernel=kernel)
    for space in (several, one, reordered):
        for name, u in directions_by_name(space, 5).items():
            assert torch.equal(u, alone[name]), name
    # nor on the dtype group it is packed with
    half = ParameterSpace([(n, p.detach().to(torch.bfloat16)) for n, p in list(model.named_parameters())[:3]],
                          kernel=kernel)
    for name, u in directions_by_name(half, 5).items():
        assert torch.equal(u, alone[name]), name


@pytest.mark.parametrize("kernel", ["torch", "triton"])
def test_a_slice_drawn_alone_equals_the_slice_of_the_whole(kernel):
    if kernel == "triton":
        pytest.importorskip("triton", reason="triton is a dev dependency on Linux x86_64")
    numel = TORCH_BLOCK + 5000 if kernel == "torch" else 3 * 4096 + 77  # across block (group) boundaries
    space = ParameterSpace([("layer.weight", torch.nn.Parameter(torch.zeros(numel)))], kernel=kernel)
    [segment] = space.segments
    whole = space.direction(9, segment)
    for start, length in ((0, 10), (4090, 20), (numel - 6000, 5999), (TORCH_BLOCK - 3, 4000) if kernel == "torch" else (8000, 4300)):
        assert torch.equal(space.direction(9, segment, start, length), whole[start : start + length])


@pytest.mark.parametrize("kernel", ["torch", "triton"])
def test_adding_a_direction_adds_exactly_the_direction_that_is_drawn(kernel):
    if kernel == "triton":
        pytest.importorskip("triton", reason="triton is a dev dependency on Linux x86_64")
    model, _ = tiny()
    space = ParameterSpace(model.named_parameters(), bucket_numel=40_000, kernel=kernel)
    theta = flat_params(space)
    u = direction_of(space, 11)
    space.add_direction(11, 0.5)
    torch.testing.assert_close(flat_params(space), theta + 0.5 * u, atol=1e-6, rtol=0)


def test_packing_keeps_every_weight_and_the_model_output():
    model, tokenizer = tiny()
    before, objective = snapshot(model), lm_objective(model, tokenizer)
    loss = objective()
    space = ParameterSpace(model.named_parameters(), bucket_numel=20_000)
    assert len(space.buckets) > 2
    for name, p in model.named_parameters():
        assert bits_equal(p, before[name])
    assert torch.equal(objective(), loss)
    space.unpack()
    storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    assert len(storages) == len(list(model.parameters()))


def test_weight_decay_is_the_optimizer_s_mask_and_skips_biases_and_norms():
    assert is_decayed("model.layers.0.mlp.up_proj.weight", torch.zeros(4, 4))
    assert not is_decayed("model.layers.0.self_attn.q_proj.bias", torch.zeros(4))
    assert not is_decayed("model.norm.weight", torch.zeros(4))
    assert not is_decayed("transformer.h.0.ln_1.weight", torch.zeros(4))
    model, tokenizer = tiny()
    space = ParameterSpace(model.named_parameters())
    only_mlp = ZOSGD(space, lr=0.1, weight_decay=0.5, decays=lambda name, p: ".mlp." in name)
    assert only_mlp.decayed == {s.name for s in space.segments if ".mlp." in s.name} != set()
    before = {s.name: space.view(s).clone() for s in space.segments}
    estimate = SPSA(space, eps=1e-3).estimate(lm_objective(model, tokenizer), 3)
    only_mlp.step(estimate)
    u = directions_by_name(space, estimate.seeds[0])
    for segment in space.segments:  # (1 − lr·wd)·θ where the mask says so, then − lr·g·u
        decay = 1 - 0.1 * 0.5 if ".mlp." in segment.name else 1.0
        expected = decay * before[segment.name] - 0.1 * estimate.scalars[0] * u[segment.name]
        torch.testing.assert_close(space.view(segment), expected, atol=1e-6, rtol=0)


def set_theta(space: ParameterSpace, values: torch.Tensor) -> None:
    with torch.no_grad():
        start = 0
        for segment in space.segments:
            view = space.view(segment)
            view.copy_(values[start : start + view.numel()])
            start += view.numel()


@pytest.mark.parametrize("two_sided, q", [(True, 1), (True, 3), (False, 2)])
def test_estimate_is_the_finite_difference_along_the_regenerated_direction(two_sided, q):
    model, tokenizer = tiny()
    objective = lm_objective(model, tokenizer)
    space = ParameterSpace(model.named_parameters(), pack=False)
    spsa = SPSA(space, eps=1e-3, q=q, two_sided=two_sided, perturbation="per-module", model=model)
    estimate = spsa.estimate(objective, step_seed=5)
    assert len(estimate.seeds) == len(estimate.scalars) == q and len(set(estimate.seeds)) == q
    theta = flat_params(space)

    def loss_at(offset):
        set_theta(space, theta + offset)
        value = objective().item()
        set_theta(space, theta)
        return value

    base = objective().item()
    for seed, scalar in zip(estimate.seeds, estimate.scalars):
        u = direction_of(space, seed) * 1e-3
        expected = (loss_at(u) - loss_at(-u)) / 2e-3 if two_sided else (loss_at(u) - base) / 1e-3
        assert scalar == pytest.approx(expected, rel=1e-3, abs=1e-3)


def test_losses_stay_on_the_device_and_reach_the_host_once_per_estimate_through_one_hook():
    model, tokenizer = tiny()
    objective, returned, reduced = lm_objective(model, tokenizer), [], []

    def tensor_objective():
        returned.append(objective())
        return returned[-1]

    def reduce(losses):  # where a distributed run all-reduces: every loss of the estimate at once
        reduced.append(losses.clone())
        return losses * 1.0

    space = ParameterSpace(model.named_parameters())
    spsa = SPSA(space, eps=1e-3, q=2, reduce=reduce)
    estimate = spsa.estimate(tensor_objective, step_seed=4)
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in returned) and len(returned) == 4
    assert len(reduced) == 1 and reduced[0].shape == (4,)
    assert estimate.losses == pytest.approx([v.item() for v in returned])
    assert space.displacement == (estimate.seeds[-1], -1e-3)  # θ − εu of the last direction, until the update


def test_the_optimizer_step_takes_back_the_displacement_in_its_update_pass():
    model, tokenizer = tiny()
    space = ParameterSpace(model.named_parameters(), bucket_numel=7000)
    theta = flat_params(space)
    estimate = SPSA(space, eps=1e-3).estimate(lm_objective(model, tokenizer), step_seed=3)
    assert space.displacement == (estimate.seeds[0], -1e-3)
    with pytest.raises(RuntimeError, match="displaced"):
        space.unpack()
    ZOSGD(space, lr=1e-2).step(estimate)
    assert space.displacement is None
    expected = theta - 1e-2 * estimate.scalars[0] * direction_of(space, estimate.seeds[0])
    torch.testing.assert_close(flat_params(space), expected, atol=1e-6, rtol=0)
    # restore() alone takes a displacement back without an update
    SPSA(space, eps=1e-3).estimate(lm_objective(model, tokenizer), step_seed=4)
    space.restore()
    torch.testing.assert_close(flat_params(space), expected, atol=1e-6, rtol=0)


def test_a_given_f_at_theta_replaces_its_evaluation_in_one_sided_spsa():
    model, tokenizer = tiny()
    objective, calls = lm_objective(model, tokenizer), []
    counted = lambda: (calls.append(1), objective())[1]
    space = ParameterSpace(model.named_parameters(), pack=False)
    spsa = SPSA(space, eps=1e-3, q=2, two_sided=False, perturbation="per-module", model=model)
    fresh = spsa.estimate(counted, step_seed=3)
    assert len(calls) == 3
    calls.clear()
    given = spsa.estimate(counted, step_seed=3, at_theta=objective())
    assert len(calls) == 2 and given.scalars == fresh.scalars and given.losses == fresh.losses
    with pytest.raises(ValueError, match="one-sided"):
        SPSA(space, eps=1e-3).estimate(counted, step_seed=3, at_theta=1.0)


def test_objective_need_not_be_differentiable():
    model, tokenizer = tiny()
    inputs = tokenizer(["abcabcabcabc"], return_tensors="pt")
    targets = inputs["input_ids"][0, 1:]

    def negative_accuracy():  # a step function of θ computed on the host: no gradient exists
        predictions = model(**inputs).logits[0, :-1].argmax(-1)
        return -(predictions == targets).float().mean().item()

    space = ParameterSpace(model.named_parameters(), pack=False)
    theta = flat_params(space)
    u = direction_of(space, mix(1, 0))
    at = {}
    for sign in (1, -1):
        set_theta(space, theta + sign * 0.5 * u)
        at[sign] = negative_accuracy()
    set_theta(space, theta)
    estimate = SPSA(space, eps=0.5, perturbation="per-module", model=model).estimate(negative_accuracy, step_seed=1)
    assert estimate.losses == [at[1], at[-1]]
    assert estimate.scalars == [pytest.approx((at[1] - at[-1]) / 1.0)]


def drift_free(model, mode: str, **space_options) -> tuple[ParameterSpace, SPSA]:
    """The space and SPSA of a perturbation mode that never leaves round-off in θ."""
    if mode == "exact":
        space = ParameterSpace(model.named_parameters(), keep_origin=True, **space_options)
    else:
        space = ParameterSpace(model.named_parameters(), pack=False, **space_options)
    return space, SPSA(space, eps=1e-3, perturbation=mode, model=model)


@pytest.mark.parametrize("mode", ["exact", "per-module"])
@pytest.mark.parametrize("q", [1, 2])
@pytest.mark.parametrize("optimizer", [ZOSGD, ZOSignSGD, ZOAdam, lambda s, lr: ZOSGD(s, lr, momentum=0.9, weight_decay=0.1)])
def test_learning_rate_zero_leaves_fp32_weights_bit_identical_with_exact_perturbation(optimizer, q, mode):
    model, tokenizer = tiny("tiny-opt")
    before = snapshot(model)
    space, spsa = drift_free(model, mode)
    spsa.q = q
    opt = optimizer(space, 0.0)
    for step in range(5):
        opt.step(spsa.estimate(lm_objective(model, tokenizer), step))
    for name, p in model.named_parameters():
        assert bits_equal(p, before[name]), name


def drift_after(steps: int, dtype: str, perturbation: str) -> float:
    model, tokenizer = tiny(dtype=dtype)
    before = snapshot(model)
    if perturbation == "in-place":
        space = ParameterSpace(model.named_parameters())
        spsa = SPSA(space, eps=1e-3)
    else:
        space, spsa = drift_free(model, perturbation)
    opt = ZOSGD(space, 0.0)
    objective = lm_objective(model, tokenizer)
    for step in range(steps):
        opt.step(spsa.estimate(objective, step))
    return max((p.float() - before[n].float()).abs().max().item() for n, p in model.named_parameters())


def test_perturb_restore_round_off_after_100_steps_at_learning_rate_zero(capsys):
    """In-place perturbation (MeZO's) cannot restore θ exactly: θ + εu − 2εu + εu rounds. The exact
    perturbation writes θ ± εu from a kept copy of θ and restores by copying it; the per-module one never
    writes a perturbed value into θ: nothing accumulates in any dtype with either."""
    modes = ("in-place", "exact", "per-module")
    drifts = {(dtype, mode): drift_after(100, dtype, mode) for dtype in ("fp32", "bf16", "fp16") for mode in modes}
    with capsys.disabled():
        print("\nmax |θ_100 − θ_0| after 100 ZO-SGD steps with lr 0 (ε = 1e-3, tiny-llama):")
        for (dtype, mode), drift in drifts.items():
            print(f"  {dtype:5s} {mode:10s} {drift:.3e}")
    for dtype in ("fp32", "bf16", "fp16"):
        assert drifts[(dtype, "exact")] == drifts[(dtype, "per-module")] == 0.0
        assert drifts[(dtype, "in-place")] > 0.0
    assert drifts[("fp32", "in-place")] < 1e-5 < drifts[("bf16", "in-place")]


@pytest.mark.parametrize("optimizer", ["zo-sgd", "zo-adam"])
def test_a_trajectory_replays_bit_identically_onto_another_packing(tmp_path, optimizer):
    # Directions keyed by name and position: the passes a replay makes give the same weights whether θ
    # is packed in buckets, one tensor per parameter, or in another order.
    from zofo.zo import make_zo_optimizer

    model, tokenizer = tiny()
    base = snapshot(model)
    space = ParameterSpace(model.named_parameters(), bucket_numel=20_000)
    spsa, opt = SPSA(space, eps=1e-3), make_zo_optimizer(optimizer, space, 1e-3)
    trajectory = Trajectory(tmp_path / "trajectory.jsonl")
    trajectory.start(space.directions)
    for step in range(1, 6):
        estimate = spsa.estimate(lm_objective(model, tokenizer), mix(0, step))
        opt.step(estimate)
        trajectory.append(step, mix(0, step), estimate.scalars, opt.lr)
    trained = snapshot(model)

    fresh, _ = tiny()
    assert all(torch.equal(p, base[n]) for n, p in fresh.named_parameters())
    other = ParameterSpace(list(fresh.named_parameters())[::-1], pack=False)
    assert replay(trajectory, SPSA(other, eps=1e-3), make_zo_optimizer(optimizer, other, 1e-3)) == 5
    for name, p in fresh.named_parameters():
        assert bits_equal(p, trained[name]), name


def test_zo_adam_matches_torch_adam_fed_with_the_materialised_estimate():
    model, tokenizer = tiny()
    objective = lm_objective(model, tokenizer)
    space = ParameterSpace(model.named_parameters(), pack=False)
    spsa = SPSA(space, eps=1e-3, perturbation="per-module", model=model)
    zo_adam = ZOAdam(space, lr=1e-3)
    reference = torch.nn.Parameter(flat_params(space))
    torch_adam = torch.optim.Adam([reference], lr=1e-3)
    for step in range(3):
        estimate = spsa.estimate(objective, step)
        zo_adam.step(estimate)
        reference.grad = estimate.scalars[0] * direction_of(space, estimate.seeds[0])
        torch_adam.step()
    torch.testing.assert_close(flat_params(space), reference.detach(), atol=1e-6, rtol=0)
    assert zo_adam.state_bytes() == 2 * 4 * space.numel


def test_average_of_spsa_estimates_approaches_the_autograd_gradient(capsys):
    """Over a small space (two norm weights, 128 numbers) the mean of N estimates aligns with ∇."""
    model, tokenizer = tiny()
    inputs = tokenizer(["The quick brown fox jumps over the lazy dog."], return_tensors="pt")
    norms = [("model.norm.weight", model.model.norm.weight),
             ("layers.1.post_attention_layernorm.weight", model.model.layers[1].post_attention_layernorm.weight)]
    loss = model(**inputs, labels=inputs["input_ids"]).loss
    gradient = torch.cat([g.flatten() for g in torch.autograd.grad(loss, [p for _, p in norms])])
    model.requires_grad_(False)
    space = ParameterSpace(norms, pack=False)
    spsa = SPSA(space, eps=1e-3, perturbation="per-module", model=model)
    objective = lambda: model(**inputs, labels=inputs["input_ids"]).loss
    total, cosines = torch.zeros_like(gradient), {}
    for n in range(1, 1001):
        estimate = spsa.estimate(objective, n)
        total += estimate.scalars[0] * direction_of(space, estimate.seeds[0])
        if n in (10, 100, 1000):
            cosines[n] = torch.nn.functional.cosine_similarity(total, gradient, dim=0).item()
    with capsys.disabled():
        print("\ncosine(mean of N SPSA estimates, autograd gradient), d = 128:",
              ", ".join(f"N={n}: {c:.3f}" for n, c in cosines.items()))
    assert cosines[10] < cosines[100] < cosines[1000]
    assert cosines[1000] > 0.9


def test_one_zo_sgd_step_lowers_the_loss_on_average():
    model, tokenizer = tiny()
    objective = lm_objective(model, tokenizer)
    space = ParameterSpace(model.named_parameters(), pack=False)
    spsa, sgd = SPSA(space, eps=1e-3, perturbation="per-module", model=model), ZOSGD(space, lr=2e-4)
    start, theta = objective().item(), flat_params(space)
    changes = []
    for seed in range(40):
        sgd.step(spsa.estimate(objective, seed))
        changes.append(objective().item() - start)
        set_theta(space, theta)
    assert sum(changes) / len(changes) < 0


def test_fused_triton_step_is_theta_minus_lr_g_u():
    pytest.importorskip("triton", reason="triton is a dev dependency on Linux x86_64")
    model, tokenizer = tiny()
    space = ParameterSpace(model.named_parameters(), kernel="triton", bucket_numel=40_000)
    assert space.kernel == "triton" and "Philox" in space.directions
    theta = flat_params(space)
    estimate = SPSA(space, eps=1e-3).estimate(lm_objective(model, tokenizer), step_seed=2)
    ZOSGD(space, lr=1e-2).step(estimate)
    expected = theta - 1e-2 * estimate.scalars[0] * direction_of(space, estimate.seeds[0])
    torch.testing.assert_close(flat_params(space), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kernel", ["torch", "triton"])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_exact_perturbation_steps_like_in_place_and_leaves_no_round_off(kernel, dtype):
    """Exact mode writes θ ± εu and the update from its kept copy of θ: the same estimates and updates as
    in place (to round-off), and at lr 0 θ is bit-identical after steps (the fused Triton pass too)."""
    if kernel == "triton":
        pytest.importorskip("triton", reason="triton is a dev dependency on Linux x86_64")
    steps, results = 3, {}
    for mode in ("in-place", "exact"):
        model, tokenizer = tiny(dtype=dtype)
        space = ParameterSpace(model.named_parameters(), kernel=kernel, bucket_numel=40_000,
                               keep_origin=mode == "exact")
        spsa, opt = SPSA(space, eps=1e-2, perturbation=mode), ZOSGD(space, lr=1e-2)
        losses = []
        for step in range(steps):
            estimate = spsa.estimate(lm_objective(model, tokenizer), step)
            opt.step(estimate)
            losses += estimate.losses
        results[mode] = (losses, flat_params(space))
        if mode == "exact":
            assert space.origin_bytes() == sum(b.flat.numel() * b.flat.element_size() for b in space.buckets)
            torch.testing.assert_close(torch.cat([o.float() for o in space.origins]),
                                       torch.cat([b.flat.float() for b in space.buckets]), atol=0, rtol=0)
    tolerance = 1e-5 if dtype == "fp32" else 2e-2
    assert results["exact"][0] == pytest.approx(results["in-place"][0], abs=tolerance)
    torch.testing.assert_close(results["exact"][1], results["in-place"][1], atol=tolerance, rtol=tolerance)

    model, tokenizer = tiny(dtype=dtype)
    before = snapshot(model)
    space = ParameterSpace(model.named_parameters(), kernel=kernel, bucket_numel=40_000, keep_origin=True)
    spsa, opt = SPSA(space, eps=1e-2, perturbation="exact"), ZOSGD(space, lr=0.0)
    for step in range(steps):
        opt.step(spsa.estimate(lm_objective(model, tokenizer), step))
    for name, p in model.named_parameters():
        assert bits_equal(p, before[name]), name
