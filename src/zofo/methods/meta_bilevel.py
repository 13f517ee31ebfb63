"""Bilevel ZOFO as a meta-learner (the paper's section 4.2): θ shared by many training tasks, each task
with its own pair of adapters, θ moved by one SPSA estimate of the sampled tasks' summed objective.

    for each training task i: φ_i and z_i (same PEFT type, same initial values); D_FT,i : D_PEFT,i = 1 : 2
    for t = 1 .. T  (T = steps // (K + 1), lower and upper steps counted together as in Bilevel ZOFO):
        S_t ← M training tasks, drawn without replacement (seeded)
        for i in S_t: K times  z_i ← Adam_{z_i}.step(∇ L(θ, z_i; B ~ D_PEFT,i))
        for i in S_t: B_FT,i ~ D_FT,i, B_P,i ~ D_PEFT,i;  φ_i ← Adam_{φ_i}.step(∇ [L(θ,φ_i;B_FT,i) + λ·L(θ,φ_i;B_P,i)])
        g = SPSA of Σ_{i∈S_t} F_i(θ), F_i = L(θ,φ_i;B_FT,i) + λ·(L(θ,φ_i;B_P,i) − L(θ,z_i;B_P,i)), seed s_t
        θ ← ZO-optimizer.step(θ, g, u(s_t))
Only the sampled tasks' adapters move in an iteration. Memory: one model, 2 × (tasks) adapters and their
Adam states.

`zofo train --method meta-bilevel --meta-setting ...` runs it (experiment.run_meta_training), then the
meta-test (meta_test.py). The run loop's validation is the mean over the training tasks of their held-out
loss with their own φ_i.
"""

from __future__ import annotations

import torch

from ..adapters import activate, adapter_parameters, adapter_state, base_parameters, load_adapter_state, with_adapters
from ..data import TaskSet
from ..calls import step_optimizer
from ..zo import mix, zo_engine
from .base import Method, sample_tasks
from .penalty import UpperObjective, phi_gradient


class MetaBilevelZOFO(Method):
    name = "meta-bilevel"

    def __init__(self, model, tasks: TaskSet, config, trajectory, tasks_per_step: int | None = None):
        super().__init__(model, tasks, config, trajectory)
        settings = config.bilevel
        self.K, self.lam, self.data = settings.k, settings.lam, list(tasks)
        self.tasks_per_step = min(tasks_per_step or config.meta.tasks_per_step, len(self.data))
        names = [name for i in range(len(self.data)) for name in (self.phi(i), self.z(i))]
        self.peft_model = with_adapters(model, config.adapter, names, config.seed, same_start=True)
        self.zo = zo_engine(self.peft_model, base_parameters(self.peft_model), config.zo, config.lr)  # over θ
        self.f_coefficients = UpperObjective.coefficients(self.lam, self.zo.space.device, tasks=self.tasks_per_step)
        self.optimizers = {name: torch.optim.Adam(adapter_parameters(self.peft_model, name),
                                                  lr=settings.upper_lr if name.startswith("phi") else settings.lower_lr)
                           for name in names}
        self.samplers = {}
        for i, data in enumerate(self.data):
            ft, peft = data.split(mix(config.seed, i))
            self.samplers[self.phi(i)] = data.sampler(config.batch_size, mix(config.seed, i, 1), ft)
            self.samplers[self.z(i)] = data.sampler(config.batch_size, mix(config.seed, i, 2), peft)

    @staticmethod
    def phi(i: int) -> str:
        return f"phi_{i}"

    @staticmethod
    def z(i: int) -> str:
        return f"z_{i}"

    @property
    def model(self):
        return self.peft_model

    def schedule(self) -> list[int]:
        return [t * (self.K + 1) for t in range(1, self.config.steps // (self.K + 1) + 1)]

    def sampled_tasks(self, t: int) -> list[int]:
        return sample_tasks(self.config.seed, t, len(self.data), self.tasks_per_step)

    def step(self, iteration: int) -> dict:
        t = iteration + 1
        sampled = self.sampled_tasks(t)
        lower_losses = [self.lower_level(i) for i in sampled]
        objectives, ft_losses = [], []
        for i in sampled:
            data, phi = self.data[i], self.phi(i)
            ft, peft = self.samplers[phi].next(), self.samplers[self.z(i)].next()
            activate(self.peft_model, phi)
            ft_losses.append(phi_gradient(self.peft_model, data, self.optimizers[phi], ft, peft, self.lam)[0])
            step_optimizer(self.optimizers[phi])  # φ first, then θ estimated at the new φ (ALGORITHM.md's order)
            objectives.append(UpperObjective(self.peft_model, data, ft, peft, self.lam, upper=phi, lower=self.z(i)))
        # Σ_i F_i from every task's parts, each part weighted over the ranks by its own minibatch
        weights = [w for f in objectives for w in f.weights()]
        estimate = self.zo_step(lambda: torch.cat([f.parts() for f in objectives]), mix(self.config.seed, t),
                                step=t * (self.K + 1), weight=weights, coefficients=self.f_coefficients)
        return {"train_loss": torch.stack(ft_losses).mean(), "lower_loss": torch.stack(lower_losses).mean(),
                "upper_objective": estimate.loss}

    def lower_level(self, i: int) -> torch.Tensor:
        """K first-order steps on task i's z_i; returns the last loss."""
        name = self.z(i)
        activate(self.peft_model, name)
        for _ in range(self.K):
            loss = self.data[i].gradient(self.peft_model, self.samplers[name].next(), self.optimizers[name])
            step_optimizer(self.optimizers[name])
        return loss

    def validation_loss(self) -> float:
        """The mean over training tasks of the held-out loss of θ with the task's own φ_i."""
        losses = []
        for i, data in enumerate(self.data):
            activate(self.peft_model, self.phi(i))
            losses.append(data.validation_loss(self.peft_model))
        return sum(losses) / len(losses)

    # --- state -----------------------------------------------------------------------------------

    def snapshot(self) -> dict:
        return {name: adapter_state(self.peft_model, name) for name in self.optimizers}

    def restore(self, step: int, snapshot: dict) -> None:
        super().restore(step, snapshot)  # θ from the trajectory
        for name, state in snapshot.items():
            load_adapter_state(self.peft_model, name, state)

    def state_dict(self) -> dict:
        return {"optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
                "samplers": {n: s.state_dict() for n, s in self.samplers.items()}, "adapters": self.snapshot()}

    def load_state_dict(self, state: dict) -> None:
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
            self.samplers[name].load_state_dict(state["samplers"][name])
            load_adapter_state(self.peft_model, name, state["adapters"][name])
