"""MetaICL (Min et al. 2022), the paper's first-order meta-training baseline: θ fully fine-tuned on the
training tasks with demonstrations of the same task in every input, then in-context prediction.

    every training input: 4 examples per class of its own task (QA: 4), never itself, then the input
    for t = 1 .. T:
        S_t ← M training tasks, drawn without replacement (seeded)
        θ ← Adam.step(θ, ∇ (1/M) Σ_{i∈S_t} L(θ; B_i)),  B_i ~ D_i (with demonstrations)
The meta-test shows the same kind of demonstrations before every test input (meta_test's "icl").
Memory: θ, its gradient and Adam's two moments (four copies of θ), the first-order cost ZO avoids.
Checkpoints hold θ itself (no trajectory: the steps are first-order), and the selection keeps a copy
of θ in host memory.
"""

from __future__ import annotations

import torch

from ..calls import step_optimizer
from ..zo import mix
from .base import Method, sample_tasks


class MetaICL(Method):
    name = "meta-icl"

    def __init__(self, model, tasks, config, trajectory):
        super().__init__(model, tasks, config, trajectory)
        self.data, self.model = list(tasks), model.requires_grad_(True)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.samplers = [data.sampler(config.batch_size, mix(config.seed, i)) for i, data in enumerate(self.data)]

    def sampled_tasks(self, t: int) -> list[int]:
        return sample_tasks(self.config.seed, t, len(self.data), self.config.meta.tasks_per_step)

    def step(self, iteration: int) -> dict:
        sampled = self.sampled_tasks(iteration + 1)
        # on several processes each task's gradient is averaged over the ranks with its own weights
        losses = [self.data[i].gradient(self.model, self.samplers[i].next(), self.optimizer, scale=1 / len(sampled))
                  for i in sampled]
        step_optimizer(self.optimizer)
        return {"train_loss": torch.stack(losses).mean()}

    def snapshot(self) -> dict:
        return {"theta": {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}}

    def restore(self, step: int, snapshot: dict) -> None:
        self.load_weights(snapshot["theta"])

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "samplers": [s.state_dict() for s in self.samplers],
                **self.snapshot()}

    def load_state_dict(self, state: dict) -> None:
        self.load_weights(state["theta"])
        self.optimizer.load_state_dict(state["optimizer"])
        for sampler, saved in zip(self.samplers, state["samplers"]):
            sampler.load_state_dict(saved)

    def load_weights(self, theta: dict) -> None:
        with torch.no_grad():  # in place: CUDA graphs read the weights where they were captured
            for name, tensor in self.model.state_dict().items():
                tensor.copy_(theta[name])
