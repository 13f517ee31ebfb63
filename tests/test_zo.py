"""The zeroth-order engine: directions, SPSA, the optimizers, numerics."""

import pytest
import torch

from zofo.zo import SPSA, ParameterSpace, ZOAdam, ZOSGD, ZOSignSGD, mix
from zofo.zo.space import is_decayed

from conftest import tiny


def lm_objective(model, tokenizer, text="The quick brown fox jumps over the lazy dog."):
    inputs = tokenizer([text], return_tensors="pt")
    return lambda: model(**inputs, labels=inputs["input_ids"]).loss.item()


def snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def direction_of(space: ParameterSpace, seed: int) -> torch.Tensor:
    """u(seed) materialised over the whole space (tests only: the engine never does this)."""
    return torch.cat([space.direction(seed, b, c, view.numel()) for b, c, view in space.chunks()])


def flat_params(space: ParameterSpace) -> torch.Tensor:
    return torch.cat([view.detach().float().clone() for _, _, view in space.chunks()])


def test_directions_are_regenerated_identically_and_differ_between_seeds():
    model, _ = tiny()
    space = ParameterSpace(model.named_parameters(), chunk_numel=5000)
    u = direction_of(space, 7)
    assert torch.equal(u, direction_of(space, 7))
    assert not torch.equal(u, direction_of(space, 8))
    assert u.numel() == space.numel == sum(p.numel() for p in model.parameters())
    assert abs(u.mean().item()) < 0.02 and abs(u.std().item() - 1) < 0.02
    assert mix(1, 2) != mix(2, 1)


def test_packing_keeps_every_weight_and_the_model_output():
    model, tokenizer = tiny()
    before, objective = snapshot(model), lm_objective(model, tokenizer)
    loss = objective()
    space = ParameterSpace(model.named_parameters(), bucket_numel=20_000)
    assert len(space.buckets) > 2
    for name, p in model.named_parameters():
        assert bits_equal(p, before[name])
    assert objective() == loss
    space.unpack()
    storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    assert len(storages) == len(list(model.parameters()))


def test_weight_decay_skips_biases_and_norms():
    assert is_decayed("model.layers.0.mlp.up_proj.weight", torch.zeros(4, 4))
    assert not is_decayed("model.layers.0.self_attn.q_proj.bias", torch.zeros(4))
    assert not is_decayed("model.norm.weight", torch.zeros(4))
    assert not is_decayed("transformer.h.0.ln_1.weight", torch.zeros(4))


@pytest.mark.parametrize("two_sided, q", [(True, 1), (True, 3), (False, 2)])
def test_estimate_is_the_finite_difference_along_the_regenerated_direction(two_sided, q):
    model, tokenizer = tiny()
    objective = lm_objective(model, tokenizer)
    space = ParameterSpace(model.named_parameters(), pack=False)
    spsa = SPSA(space, eps=1e-3, q=q, two_sided=two_sided, perturbation="exact", model=model)
    estimate = spsa.estimate(objective, step_seed=5)
    assert len(estimate.seeds) == len(estimate.scalars) == q and len(set(estimate.seeds)) == q
    theta = flat_params(space)
    names = [n for n, _ in model.named_parameters()]

    def loss_at(offset):
        with torch.no_grad():
            start = 0
            for _, _, view in space.chunks():
                view.add_(offset[start : start + view.numel()])
                start += view.numel()
            value = objective()
            start = 0
            for _, _, view in space.chunks():
                view.copy_(theta[start : start + view.numel()])
                start += view.numel()
        return value

    base = objective()
    for seed, scalar in zip(estimate.seeds, estimate.scalars):
        u = direction_of(space, seed) * 1e-3
        expected = (loss_at(u) - loss_at(-u)) / 2e-3 if two_sided else (loss_at(u) - base) / 1e-3
        assert scalar == pytest.approx(expected, rel=1e-3, abs=1e-3)
    assert names == [n for n, _ in model.named_parameters()]


def test_a_given_f_at_theta_replaces_its_evaluation_in_one_sided_spsa():
    model, tokenizer = tiny()
    objective, calls = lm_objective(model, tokenizer), []
    counted = lambda: (calls.append(1), objective())[1]
    space = ParameterSpace(model.named_parameters(), pack=False)
    spsa = SPSA(space, eps=1e-3, q=2, two_sided=False, perturbation="exact", model=model)
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

    def negative_accuracy():  # a step function of θ: no gradient exists
        predictions = model(**inputs).logits[0, :-1].argmax(-1)
        return -(predictions == targets).float().mean().item()

    space = ParameterSpace(model.named_parameters())
    estimate = SPSA(space, eps=0.05).estimate(negative_accuracy, step_seed=1)
    ZOSGD(space, lr=1e-3).step(estimate)
    assert all(isinstance(s, float) for s in estimate.scalars) and len(estimate.losses) == 2


@pytest.mark.parametrize("optimizer", [ZOSGD, ZOSignSGD, ZOAdam, lambda s, lr: ZOSGD(s, lr, momentum=0.9, weight_decay=0.1)])
def test_learning_rate_zero_leaves_fp32_weights_bit_identical_with_exact_perturbation(optimizer):
    model, tokenizer = tiny("tiny-opt")
    before = snapshot(model)
    space = ParameterSpace(model.named_parameters(), pack=False)
    spsa = SPSA(space, eps=1e-3, perturbation="exact", model=model)
    opt = optimizer(space, 0.0)
    for step in range(5):
        opt.step(spsa.estimate(lm_objective(model, tokenizer), step))
    for name, p in model.named_parameters():
        assert bits_equal(p, before[name]), name


def drift_after(steps: int, dtype: str, perturbation: str) -> float:
    model, tokenizer = tiny(dtype=dtype)
    before = snapshot(model)
    space = ParameterSpace(model.named_parameters(), pack=perturbation == "in-place")
    spsa, opt = SPSA(space, eps=1e-3, perturbation=perturbation, model=model), ZOSGD(space, 0.0)
    objective = lm_objective(model, tokenizer)
    for step in range(steps):
        opt.step(spsa.estimate(objective, step))
    return max((p.float() - before[n].float()).abs().max().item() for n, p in model.named_parameters())


def test_perturb_restore_round_off_after_100_steps_at_learning_rate_zero(capsys):
    """In-place perturbation (MeZO's) cannot restore θ exactly: θ + εu − 2εu + εu rounds. The exact
    perturbation never writes a perturbed value into θ, so nothing accumulates in any dtype."""
    drifts = {(dtype, mode): drift_after(100, dtype, mode) for dtype in ("fp32", "bf16", "fp16")
              for mode in ("in-place", "exact")}
    with capsys.disabled():
        print("\nmax |θ_100 − θ_0| after 100 ZO-SGD steps with lr 0 (ε = 1e-3, tiny-llama):")
        for (dtype, mode), drift in drifts.items():
            print(f"  {dtype:5s} {mode:9s} {drift:.3e}")
    for dtype in ("fp32", "bf16", "fp16"):
        assert drifts[(dtype, "exact")] == 0.0
        assert drifts[(dtype, "in-place")] > 0.0
    assert drifts[("fp32", "in-place")] < 1e-5 < drifts[("bf16", "in-place")]


def test_zo_sgd_step_is_theta_minus_lr_g_u_with_the_restore_fused():
    model, tokenizer = tiny()
    space = ParameterSpace(model.named_parameters(), chunk_numel=7000)
    theta = flat_params(space)
    estimate = SPSA(space, eps=1e-3).estimate(lm_objective(model, tokenizer), step_seed=3)
    assert estimate.pending_seed == estimate.seeds[0]  # θ is at θ − εu until the optimizer runs
    ZOSGD(space, lr=1e-2).step(estimate)
    expected = theta - 1e-2 * estimate.scalars[0] * direction_of(space, estimate.seeds[0])
    torch.testing.assert_close(flat_params(space), expected, atol=1e-6, rtol=0)


def test_zo_adam_matches_torch_adam_fed_with_the_materialised_estimate():
    model, tokenizer = tiny()
    objective = lm_objective(model, tokenizer)
    space = ParameterSpace(model.named_parameters(), pack=False)
    spsa = SPSA(space, eps=1e-3, perturbation="exact", model=model)
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
    spsa = SPSA(space, eps=1e-3, perturbation="exact", model=model)
    objective = lambda: model(**inputs, labels=inputs["input_ids"]).loss.item()
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
    spsa, sgd = SPSA(space, eps=1e-3, perturbation="exact", model=model), ZOSGD(space, lr=2e-4)
    start, theta = objective(), flat_params(space)
    changes = []
    for seed in range(40):
        sgd.step(spsa.estimate(objective, seed))
        changes.append(objective() - start)
        with torch.no_grad():
            offset = 0
            for _, _, view in space.chunks():
                view.copy_(theta[offset : offset + view.numel()])
                offset += view.numel()
    assert sum(changes) / len(changes) < 0


def test_fused_triton_kernel_adds_exactly_the_direction_it_regenerates():
    pytest.importorskip("triton", reason="triton is a dev dependency on Linux x86_64")
    model, tokenizer = tiny()
    space = ParameterSpace(model.named_parameters(), kernel="triton", bucket_numel=40_000)
    assert space.kernel == "triton" and space.chunk_numel == 40_000
    theta = flat_params(space)
    u = direction_of(space, 11)
    assert abs(u.std().item() - 1) < 0.02
    space.add_direction(11, 0.5)
    torch.testing.assert_close(flat_params(space), theta + 0.5 * u, atol=1e-6, rtol=0)

    # A whole ZO-SGD step through the fused path: θ − lr·g·u, the restore fused.
    space.add_direction(11, -0.5)
    theta = flat_params(space)
    estimate = SPSA(space, eps=1e-3).estimate(lm_objective(model, tokenizer), step_seed=2)
    ZOSGD(space, lr=1e-2).step(estimate)
    expected = theta - 1e-2 * estimate.scalars[0] * direction_of(space, estimate.seeds[0])
    torch.testing.assert_close(flat_params(space), expected, atol=1e-6, rtol=0)
