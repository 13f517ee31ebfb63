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
Adam states (kept beside the model and swapped into its two adapters in turn: TaskAdapters).

`zofo train --method meta-bilevel --meta-setting ...` runs it (experiment.run_meta_training), then the
meta-test (meta_test.py). The run loop's validation is the mean over the training tasks of their held-out
loss with their own φ_i.
"""

from __future__ import annotations

import torch

from ..adapters import activate, adapter_parameters, base_parameters, with_adapters
from ..data import TaskSet
from ..calls import step_optimizer
from ..zo import mix, zo_engine
from .base import Method, sample_tasks
from .penalty import LOWER, UPPER, UpperObjective, phi_gradient


class TaskAdapters:
    """Every task's values of one of the model's two adapters (φ's or z's) and of its Adam state. The model
    holds one such adapter, its *slot*; `load(i)` copies task i's values into it, in place, and hands its
    optimizer task i's state; `store(i)` keeps the slot's values as task i's. So the model's modules, the
    parameters' storage and with them the captured CUDA graphs are the same for every task: graphs keyed by
    the active adapter are captured for two adapters, not for two per task (captured once per task visit,
    they would cost more than they save, and their memory would grow with the tasks)."""

    def __init__(self, model, slot: str, optimizer: torch.optim.Optimizer, tasks: int):
        self.optimizer = optimizer
        self.parameters = adapter_parameters(model, slot)
        with torch.no_grad():
            self.values = [[p.detach().clone() for p in self.parameters] for _ in range(tasks)]  # same start
        self.states: list[dict[int, dict]] = [{} for _ in range(tasks)]  # parameter index -> its Adam state

    @torch.no_grad()
    def load(self, i: int) -> None:
        torch._foreach_copy_(self.parameters, self.values[i])
        self.optimizer.state.clear()
        for k, state in self.states[i].items():
            self.optimizer.state[self.parameters[k]] = state  # by reference: Adam updates it in place

    @torch.no_grad()
    def store(self, i: int) -> None:
        torch._foreach_copy_(self.values[i], self.parameters)
        self.states[i] = {k: self.optimizer.state[p] for k, p in enumerate(self.parameters) if p in self.optimizer.state}

    def snapshot(self) -> list[list[torch.Tensor]]:
        return [[v.clone() for v in task] for task in self.values]

    def nbytes(self) -> dict[str, int]:
        """Memory held beside the model: every task's values, and the Adam states of the tasks visited."""
        states = [t for task in self.states for state in task.values() for t in state.values()
                  if isinstance(t, torch.Tensor)]
        return {"values": sum(v.nbytes for task in self.values for v in task),
                "adam_states": sum(t.nbytes for t in states)}

    def load_states(self, states: list[dict[int, dict]]) -> None:
        """Adam states read from a checkpoint (loaded onto the CPU): each tensor onto its parameter's device,
        but the step count, which torch's Adam keeps on the CPU (neither fused nor capturable here)."""
        place = lambda k, name, value: value.to(self.parameters[k].device) \
            if isinstance(value, torch.Tensor) and name != "step" else value
        self.states = [{k: {name: place(k, name, value) for name, value in state.items()} for k, state in task.items()}
                       for task in states]

    @torch.no_grad()
    def restore(self, snapshot: list[list[torch.Tensor]]) -> None:
        for task, saved in zip(self.values, snapshot):
            torch._foreach_copy_(task, [v.to(task[0].device) for v in saved])


class MetaBilevelZOFO(Method):
    name = "meta-bilevel"

    def __init__(self, model, tasks: TaskSet, config, trajectory, tasks_per_step: int | None = None):
        super().__init__(model, tasks, config, trajectory)
        settings = config.bilevel
        self.K, self.lam, self.data = settings.k, settings.lam, list(tasks)
        self.tasks_per_step = min(tasks_per_step or config.meta.tasks_per_step, len(self.data))
        # two adapter slots, every task's φ_i and z_i starting from the same values (see TaskAdapters)
        self.peft_model = with_adapters(model, config.adapter, [UPPER, LOWER], config.seed, same_start=True)
        self.zo = zo_engine(self.peft_model, base_parameters(self.peft_model), config.zo, config.lr)  # over θ
        self.f_coefficients = UpperObjective.coefficients(self.lam, self.zo.space.device, tasks=self.tasks_per_step)
        adam = lambda slot, lr: torch.optim.Adam(adapter_parameters(self.peft_model, slot), lr=lr)
        self.phis = TaskAdapters(self.peft_model, UPPER, adam(UPPER, settings.upper_lr), len(self.data))
        self.zs = TaskAdapters(self.peft_model, LOWER, adam(LOWER, settings.lower_lr), len(self.data))
        self.ft_samplers, self.peft_samplers = [], []
        for i, data in enumerate(self.data):
            ft, peft = data.split(mix(config.seed, i))
            self.ft_samplers.append(data.sampler(config.batch_size, mix(config.seed, i, 1), ft))
            self.peft_samplers.append(data.sampler(config.batch_size, mix(config.seed, i, 2), peft))

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
            data, ft, peft = self.data[i], self.ft_samplers[i].next(), self.peft_samplers[i].next()
            self.phis.load(i)
            activate(self.peft_model, UPPER)
            ft_losses.append(phi_gradient(self.peft_model, data, self.phis.optimizer, ft, peft, self.lam)[0])
            step_optimizer(self.phis.optimizer)  # φ first, then θ estimated at the new φ (ALGORITHM.md's order)
            self.phis.store(i)
            objectives.append(UpperObjective(self.peft_model, data, ft, peft, self.lam))
        # Σ_i F_i from every task's parts, each part weighted over the ranks by its own minibatch
        weights = [w for f in objectives for w in f.weights()]
        estimate = self.zo_step(lambda: self.summed_parts(sampled, objectives), mix(self.config.seed, t),
                                step=t * (self.K + 1), weight=weights, coefficients=self.f_coefficients)
        return {"train_loss": torch.stack(ft_losses).mean(), "lower_loss": torch.stack(lower_losses).mean(),
                "upper_objective": estimate.loss}

    def summary(self) -> dict:
        """What the run holds in memory: one model (θ and its two adapter slots) plus every task's φ_i, z_i
        and their Adam states."""
        phis, zs = self.phis.nbytes(), self.zs.nbytes()
        return {**super().summary(), "memory_bytes": {
            "model": sum(p.nbytes for p in self.peft_model.parameters()),
            "task_adapters": phis["values"] + zs["values"], "task_adam_states": phis["adam_states"] + zs["adam_states"]}}

    def load(self, i: int) -> None:
        """Task i's φ_i and z_i into the model's two adapter slots."""
        self.phis.load(i)
        self.zs.load(i)

    def summed_parts(self, sampled: list[int], objectives: list[UpperObjective]) -> torch.Tensor:
        """Every sampled task's parts of F_i at the current θ, each with its own adapters."""
        parts = []
        for i, objective in zip(sampled, objectives):
            self.load(i)
            parts.append(objective.parts())
        return torch.cat(parts)

    def lower_level(self, i: int) -> torch.Tensor:
        """K first-order steps on task i's z_i; returns the last loss."""
        self.zs.load(i)
        activate(self.peft_model, LOWER)
        for _ in range(self.K):
            loss = self.data[i].gradient(self.peft_model, self.peft_samplers[i].next(), self.zs.optimizer)
            step_optimizer(self.zs.optimizer)
        self.zs.store(i)
        return loss

    def validation_loss(self) -> float:
        """The mean over training tasks of the held-out loss of θ with the task's own φ_i."""
        losses = []
        activate(self.peft_model, UPPER)
        for i, data in enumerate(self.data):
            self.phis.load(i)
            losses.append(data.validation_loss(self.peft_model))
        return sum(losses) / len(losses)

    # --- state -----------------------------------------------------------------------------------

    def snapshot(self) -> dict:
        return {"phi": self.phis.snapshot(), "z": self.zs.snapshot()}

    def restore(self, step: int, snapshot: dict) -> None:
        super().restore(step, snapshot)  # θ from the trajectory
        self.phis.restore(snapshot["phi"])
        self.zs.restore(snapshot["z"])

    def state_dict(self) -> dict:  # the adapters themselves are the snapshot's
        return {"adam": {"phi": self.phis.states, "z": self.zs.states},
                "samplers": {"ft": [s.state_dict() for s in self.ft_samplers],
                             "peft": [s.state_dict() for s in self.peft_samplers]}}

    def load_state_dict(self, state: dict) -> None:
        self.phis.load_states(state["adam"]["phi"])
        self.zs.load_states(state["adam"]["z"])
        for sampler, saved in zip(self.ft_samplers + self.peft_samplers,
                                  state["samplers"]["ft"] + state["samplers"]["peft"]):
            sampler.load_state_dict(saved)
