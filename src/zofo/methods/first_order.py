"""First-order PEFT: Adam on the adapter, the base model frozen.

    attach adapter φ (LoRA / prefix / prompt) to the frozen base θ
    for t = 1 .. T:
        B ~ D_train
        φ ← Adam.step(φ, ∇_φ L(θ, φ; B))        # several processes: ∇ averaged over the ranks' shards of B
    (the run loop evaluates, keeps the φ of lowest validation loss, checkpoints and resumes)
"""

from __future__ import annotations

import torch

from ..adapters import DEFAULT, adapter_parameters, adapter_state, load_adapter_state, with_adapters
from ..calls import step_optimizer
from .base import Method


class FirstOrder(Method):
    name = "fo"

    def __init__(self, model, tasks, config, trajectory):
        super().__init__(model, tasks, config, trajectory)
        self.data = tasks.single
        self.model = self.peft_model = with_adapters(model, config.adapter, [DEFAULT], config.seed)
        self.optimizer = torch.optim.Adam(adapter_parameters(self.peft_model, DEFAULT), lr=config.lr)
        self.sampler = self.data.sampler(config.batch_size, config.seed)

    def step(self, iteration: int) -> dict:
        loss = self.data.gradient(self.peft_model, self.sampler.next(), self.optimizer)
        step_optimizer(self.optimizer)
        return {"train_loss": loss}

    def snapshot(self) -> dict:
        return {"adapter": adapter_state(self.peft_model, DEFAULT)}

    def restore(self, step: int, snapshot: dict) -> None:
        load_adapter_state(self.peft_model, DEFAULT, snapshot["adapter"])

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.load_state_dict(state["sampler"])
