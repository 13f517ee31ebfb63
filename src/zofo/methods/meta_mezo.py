"""MeZO as a meta-learner: the paper's baseline "MeZO meta-training of θ alone" (λ = 0, no adapters).

    for t = 1 .. T:
        S_t ← M training tasks, drawn without replacement (seeded)
        for i in S_t: B_i ~ D_i
        g = SPSA of Σ_{i∈S_t} L(θ; B_i), seed s_t          # two forwards per task, nothing differentiated
        θ ← ZO-optimizer.step(θ, g, u(s_t))
Then the same meta-test as Bilevel ZOFO's (zero-shot, and a fresh LoRA tuned per test task and seed).
One iteration is one counted step (Bilevel ZOFO counts K + 1 per outer iteration).
"""

from __future__ import annotations

import torch

from ..adapters import base_parameters
from ..zo import mix, zo_engine
from .base import Method, sample_tasks


class MetaMeZO(Method):
    name = "meta-mezo"

    def __init__(self, model, tasks, config, trajectory):
        super().__init__(model, tasks, config, trajectory)
        self.data = list(tasks)
        self.model = model.requires_grad_(False).eval()
        self.zo = zo_engine(self.model, base_parameters(self.model), config.zo, config.lr)
        self.samplers = [data.sampler(config.batch_size, mix(config.seed, i)) for i, data in enumerate(self.data)]
        # Σ of the sampled tasks' losses, as coefficients of the parts (made once: see UpperObjective.coefficients)
        self.task_coefficients = torch.ones(len(self.sampled_tasks(1)), device=self.zo.space.device)

    def sampled_tasks(self, t: int) -> list[int]:
        return sample_tasks(self.config.seed, t, len(self.data), self.config.meta.tasks_per_step)

    def step(self, iteration: int) -> dict:
        t = iteration + 1
        shards = [(self.data[i], self.samplers[i].next()) for i in self.sampled_tasks(t)]  # this rank's, on several
        batches = [(data, data.batch(examples)) for data, examples in shards]
        # the sum of the tasks' losses, each averaged over the ranks with its own minibatch's weights
        weights = [data.loss_weight(examples) for data, examples in shards]
        estimate = self.zo_step(lambda: torch.stack([data.batch_loss(self.model, b) for data, b in batches]),
                                mix(self.config.seed, t), step=t, weight=weights,
                                coefficients=self.task_coefficients)
        return {"train_loss": estimate.loss / len(batches)}  # the mean task loss

    def state_dict(self) -> dict:
        return {"samplers": [s.state_dict() for s in self.samplers]}

    def load_state_dict(self, state: dict) -> None:
        for sampler, saved in zip(self.samplers, state["samplers"]):
            sampler.load_state_dict(saved)
