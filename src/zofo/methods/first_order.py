"""First-order PEFT: Adam on the adapter, the base model frozen.

    attach adapter φ (LoRA / prefix / prompt) to the frozen base θ
    for t = 1 .. T:
        B ~ D_train
        φ ← Adam.step(φ, ∇_φ L(θ, φ; B))
        every `eval_every` steps: keep φ if the validation loss is the lowest so far
    return θ with the selected φ
"""

from __future__ import annotations

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from tqdm.auto import tqdm

from ..adapters import adapter_of, attach_adapter, trainable_parameters
from ..config import TrainConfig
from ..runs import Run
from ..training import BestCheckpoint, TaskData, check_finite


def train(model, data: TaskData, config: TrainConfig, run: Run):
    model = attach_adapter(model, adapter_of(config))
    model.eval()  # no dropout, as in MeZO: the same network in training and evaluation
    optimizer = torch.optim.Adam(trainable_parameters(model), lr=config.lr)
    loss_fn, sampler, best = data.loss_fn(), data.sampler(config.batch_size, config.seed), BestCheckpoint()

    progress = tqdm(range(1, config.steps + 1), desc=f"fo-{config.peft}", unit="step")
    for step in progress:
        loss = loss_fn(model, data.train_batch(sampler.next(), model.device))
        check_finite(loss.item(), step)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        run.log(step=step, train_loss=loss.item())

        if step % config.eval_every == 0 or step == config.steps:
            val_loss = data.validation_loss(model)
            run.log(step=step, val_loss=val_loss)
            best.update(step, val_loss, get_peft_model_state_dict(model))
            progress.set_postfix(loss=f"{loss.item():.3f}", val=f"{val_loss:.3f}", best=best.step)

    set_peft_model_state_dict(model, best.state)
    return model, best.summary()
