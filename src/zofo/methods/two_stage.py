"""The two-stage pipeline (the paper's Table 9 baseline): first-order PEFT, then MeZO on θ with the
adapter frozen. Step counts match a Bilevel ZOFO run with the same bilevel settings:

    T = steps // (K + 1) upper steps, K lower steps each
    stage 1: φ ← first-order PEFT (Adam, lr = bilevel.lower_lr) for T·K steps, on all training examples
    φ ← the stage-1 step of lowest validation loss (evaluated at the end of the stage too); frozen
    stage 2: θ ← MeZO (ZO optimizer, lr = lr) for T steps on L(θ, φ; B)
    the run loop selects among all evaluated steps: stage 1's (θ₀ with φ_t) and stage 2's (θ_t with φ)
"""

from __future__ import annotations

import torch

from ..adapters import DEFAULT, adapter_parameters, adapter_state, base_parameters, load_adapter_state, with_adapters
from ..calls import step_optimizer
from ..zo import mix, zo_engine
from .base import Method


class TwoStage(Method):
    name = "two-stage"

    def __init__(self, model, tasks, config, trajectory):
        super().__init__(model, tasks, config, trajectory)
        self.data, K = tasks.single, config.bilevel.k
        self.T = config.steps // (K + 1)
        self.first_stage_steps = self.T * K
        self.model = self.peft_model = with_adapters(model, config.adapter, [DEFAULT], config.seed)
        self.optimizer = torch.optim.Adam(adapter_parameters(self.peft_model, DEFAULT), lr=config.bilevel.lower_lr)
        self.zo = zo_engine(self.peft_model, base_parameters(self.peft_model), config.zo, config.lr)  # over θ
        self.adapter_sampler = self.data.sampler(config.batch_size, config.seed)
        self.theta_sampler = self.data.sampler(config.batch_size, mix(config.seed, 3))

    def schedule(self) -> list[int]:
        return list(range(1, self.first_stage_steps + self.T + 1))

    def must_evaluate(self, iteration: int) -> bool:
        return iteration == self.first_stage_steps - 1  # the stage-1 selection needs its last step too

    def step(self, iteration: int) -> dict:
        model, step = self.peft_model, iteration + 1
        if step <= self.first_stage_steps:  # stage 1: Adam on φ
            loss = self.data.gradient(model, self.adapter_sampler.next(), self.optimizer)
            step_optimizer(self.optimizer)
            return {"train_loss": loss}
        examples = self.theta_sampler.next()  # stage 2: MeZO on θ
        batch = self.data.batch(examples)
        t = step - self.first_stage_steps
        estimate = self.zo_step(lambda: self.data.batch_loss(model, batch), mix(self.config.seed, t), step,
                                weight=self.data.loss_weight(examples))
        return {"train_loss": estimate.loss}

    def evaluated(self, iteration: int, val_loss: float, best) -> None:
        if iteration == self.first_stage_steps - 1:  # stage 2 starts from the selected, frozen φ
            load_adapter_state(self.peft_model, DEFAULT, best.snapshot["adapter"])
            self.freeze_adapter()

    def freeze_adapter(self) -> None:
        for p in adapter_parameters(self.peft_model, DEFAULT):
            p.requires_grad_(False)

    def snapshot(self) -> dict:
        return {"adapter": adapter_state(self.peft_model, DEFAULT)}

    def restore(self, step: int, snapshot: dict) -> None:
        super().restore(step, snapshot)  # θ from the trajectory (stage-2 steps only)
        load_adapter_state(self.peft_model, DEFAULT, snapshot["adapter"])
        if step >= self.first_stage_steps:
            self.freeze_adapter()

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "adapter_sampler": self.adapter_sampler.state_dict(),
                "theta_sampler": self.theta_sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.adapter_sampler.load_state_dict(state["adapter_sampler"])
        self.theta_sampler.load_state_dict(state["theta_sampler"])

    def summary(self) -> dict:
        return {**super().summary(), "stage_steps": [self.first_stage_steps, self.T]}
