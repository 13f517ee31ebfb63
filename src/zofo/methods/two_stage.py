"""The two-stage pipeline (the paper's Table 9 baseline): first-order PEFT, then MeZO on θ with the
adapter frozen. Step counts match a Bilevel ZOFO run of the same config:

    T = steps // (K + 1) upper steps, K lower steps each
    stage 1: φ ← first-order PEFT (Adam, lr = lower_lr) for T·K steps, on all training examples
    stage 2: θ ← MeZO (ZO optimizer, lr = lr) for T steps on L(θ, φ; B), φ frozen
    return θ and φ at the stage-2 step of lowest validation loss (the stage-1 result counts as step 0)
"""

from __future__ import annotations

import dataclasses

from peft import get_peft_model_state_dict, set_peft_model_state_dict
from tqdm.auto import tqdm

from ..adapters import adapter_of, attach_adapter
from ..config import TrainConfig
from ..models import load_model
from ..runs import Run
from ..training import BestCheckpoint, TaskData, check_finite
from ..zo import Trajectory, mix, replay
from . import first_order
from .bilevel import theta_engine, upper_steps


def frozen_adapter(model):
    return model.requires_grad_(False).eval()


def train(model, data: TaskData, config: TrainConfig, run: Run):
    T, K = upper_steps(config), config.bilevel_k
    stage_one = dataclasses.replace(config, steps=T * K, lr=config.lower_lr, eval_every=min(config.eval_every, T * K))
    model, first = first_order.train(model, data, stage_one, run)
    adapter_state = {k: v.clone() for k, v in get_peft_model_state_dict(model).items()}
    model = frozen_adapter(model)

    space, spsa, optimizer = theta_engine(model, config)
    trajectory, best = Trajectory(run.folder / "trajectory.jsonl"), BestCheckpoint()
    trajectory.start(space.directions)
    best.update(0, first["best_val_loss"], {})
    loss_fn, sampler = data.loss_fn(), data.sampler(config.batch_size, mix(config.seed, 3))
    progress = tqdm(range(1, T + 1), desc=f"two-stage mezo on θ ({config.peft} frozen)", unit="step")
    for t in progress:
        batch = data.train_batch(sampler.next(), model.device)
        seed = mix(config.seed, t)
        estimate = spsa.estimate(lambda: loss_fn(model, batch).item(), seed)
        check_finite(estimate.loss, t, seed)
        optimizer.step(estimate)
        trajectory.append(t, seed, estimate, optimizer.lr)
        run.log(step=T * K + t, train_loss=estimate.loss)
        if t % max(1, config.eval_every // (K + 1)) == 0 or t == T:
            val_loss = data.validation_loss(model)
            run.log(step=T * K + t, val_loss=val_loss)
            best.update(t, val_loss, {})
            progress.set_postfix(val=f"{val_loss:.3f}", best=best.step)

    if best.step != T:  # rebuild θ at the selected step from the base and the trajectory
        del model, space, spsa, optimizer
        fresh, _ = load_model(config.model, config.dtype, config.device, seed=config.seed)
        model = frozen_adapter(attach_adapter(fresh, adapter_of(config)))
        set_peft_model_state_dict(model, adapter_state)
        space, spsa, optimizer = theta_engine(model, config)
        replay(trajectory, spsa, optimizer, until=best.step)
    space.unpack()
    return model, {"best_step": T * K + best.step, "best_val_loss": best.val_loss, "stage_one": first,
                   "stage_steps": [T * K, T], "trajectory_bytes": trajectory.path.stat().st_size}
