"""MeZO: zeroth-order SPSA on the whole model (--peft none) or on an adapter's parameters.

    θ_zo = every base weight (full) or the adapter's weights (lora / prefix / prompt, base frozen)
    for t = 1 .. T:
        B ~ D_train,  s = seed of step t
        g = SPSA(L(·; B) at θ_zo, direction u(s))          # two forwards, nothing differentiated
        θ_zo ← ZO-optimizer.step(θ_zo, g, u(s))             # u regenerated from s; restore fused
        append (t, s, g, lr) to the trajectory
        every `eval_every` steps: validation loss, checkpoint
    return θ at the step of lowest validation loss, rebuilt from the start point and the trajectory
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..adapters import adapter_of, attach_adapter
from ..config import TrainConfig
from ..models import load_model
from ..runs import Run
from ..training import BestCheckpoint, TaskData, check_finite
from ..zo import SPSA, ParameterSpace, Trajectory, make_zo_optimizer, mix, replay


def zo_parameters(model, config: TrainConfig):
    """The model to train and the named parameters SPSA perturbs (no autograd anywhere)."""
    if config.peft != "none":
        torch.manual_seed(config.seed)  # the same adapter initialisation in training, replay and resume
        model = attach_adapter(model, adapter_of(config))
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    else:
        named = list(model.named_parameters())
    model.requires_grad_(False)
    return model.eval(), named


def zo_machinery(model, named_parameters, config: TrainConfig):
    """(space, estimator, optimizer) over `named_parameters`, as the config's zo_* fields say."""
    space = ParameterSpace(named_parameters, pack=config.zo_perturbation == "in-place")
    spsa = SPSA(space, config.zo_eps, config.zo_q, two_sided=not config.zo_one_sided,
                perturbation=config.zo_perturbation, model=model)
    optimizer = make_zo_optimizer(config.zo_optimizer, space, config.lr, config.zo_momentum, config.weight_decay)
    return space, spsa, optimizer


def zo_engine(model, config: TrainConfig):
    """(model, space, estimator, optimizer) for a fresh start point of this config."""
    model, named = zo_parameters(model, config)
    return (model, *zo_machinery(model, named, config))


def rebuild(config: TrainConfig, trajectory: Trajectory, until: int | None):
    """The start point (base weights, seeded adapter) with the trajectory replayed up to `until`."""
    model, _ = load_model(config.model, config.dtype, config.device, seed=config.seed)
    model, space, spsa, optimizer = zo_engine(model, config)
    replay(trajectory, spsa, optimizer, until)
    return model, space, spsa, optimizer


def step_seed(config: TrainConfig, step: int) -> int:
    return mix(config.seed, step)


def train(model, data: TaskData, config: TrainConfig, run: Run):
    trajectory = Trajectory(run.folder / "trajectory.jsonl")
    sampler, best, first_step = data.sampler(config.batch_size, config.seed), BestCheckpoint(), 1
    if run.checkpoint:
        checkpoint = run.checkpoint
        first_step = checkpoint["step"] + 1
        best.step, best.val_loss = checkpoint["best_step"], checkpoint["best_val_loss"]
        model, space, spsa, optimizer = rebuild(config, trajectory, until=checkpoint["step"])
        for _ in range(checkpoint["step"]):  # the sampler's draws are a function of the step count
            sampler.next()
    else:
        model, space, spsa, optimizer = zo_engine(model, config)
    trajectory.start(space.directions, keep_until=first_step - 1)
    loss_fn = data.loss_fn()

    progress = tqdm(range(first_step, config.steps + 1), desc=f"mezo-{config.peft}", unit="step",
                    initial=first_step - 1, total=config.steps)
    for step in progress:
        batch = data.train_batch(sampler.next(), model.device)
        seed = step_seed(config, step)
        estimate = spsa.estimate(lambda: loss_fn(model, batch).item(), seed)
        check_finite(estimate.loss, step, seed)
        optimizer.step(estimate)
        trajectory.append(step, seed, estimate, optimizer.lr)
        run.log(step=step, train_loss=estimate.loss, projected_grad=estimate.scalars[0])

        if step % config.eval_every == 0 or step == config.steps:
            val_loss = data.validation_loss(model)
            run.log(step=step, val_loss=val_loss)
            best.update(step, val_loss, {})  # no copy of θ: the trajectory can rebuild any step
            run.save_checkpoint(step=step, best_step=best.step, best_val_loss=best.val_loss)
            progress.set_postfix(loss=f"{estimate.loss:.3f}", val=f"{val_loss:.3f}", best=best.step)

    if best.step != config.steps:
        del model, space, spsa, optimizer
        model, space, _, optimizer = rebuild(config, trajectory, until=best.step)
    space.unpack()  # own storage per tensor again, for save_pretrained
    return model, {**best.summary(), "trajectory_bytes": trajectory.path.stat().st_size,
                   "zo_parameters": space.numel, "zo_optimizer_state_bytes": optimizer.state_bytes()}
