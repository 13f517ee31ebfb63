"""Bilevel ZOFO (the paper's Algorithm 2): zeroth-order on the base model θ at the upper level,
first-order on the adapter at the lower level, tied by a penalty.

    φ (upper adapter, "default") and z (lower adapter, "lower"): same PEFT type, same initial values
    split the training sample 1 : 2 into D_FT and D_PEFT
    for t = 1 .. T  (T = steps // (K + 1): lower and upper steps count together):
        repeat K times:                                    # lower level: z ← argmin L(θ, z; D_PEFT)
            B ~ D_PEFT;  z ← Adam_z.step(∇_z L(θ, z; B))
        B_FT ~ D_FT,  B_P ~ D_PEFT                         # one pair of minibatches for the upper step
        φ ← Adam_φ.step(∇_φ [L(θ, φ; B_FT) + λ·L(θ, φ; B_P)])      # exact gradient (z does not depend on φ)
        g = SPSA of F(θ) = L(θ, φ; B_FT) + λ·(L(θ, φ; B_P) − L(θ, z; B_P)), at the new φ, seed s_t
        θ ← ZO-optimizer.step(θ, g, u(s_t))
    evaluate and save θ with φ

`bilevel.order` makes the order within an upper step explicit (ALGORITHM.md allows either):
    phi-first   (the box above) φ is updated first and θ estimated at the new φ.
    same-point  (the authors' code) F is estimated at the old φ and both are updated from that point.
                With one-sided SPSA, F(θ) then takes its first two losses from the forwards of φ's
                gradient: one minibatch forward (z on B_P) instead of three.
F's three losses cost two model calls: φ on B_FT ∪ B_P, z on B_P.

The authors' protocol, as options (ALGORITHM.md's algorithm is the default):
    bilevel.eval_adapter lower   select, test and save θ with z instead of θ with φ
    bilevel.cycle authors        K lower steps in the first cycle, K − 1 in later ones, until exactly
                                 `steps` steps (with K = 30 and 5,000 steps the run ends on lower steps)
    bilevel.optimizer shared     one learning rate (--lr) for θ's ZO-Adam and φ's Adam
Every run also tests the other adapter with θ, and θ alone, at the selected step.
"""

from __future__ import annotations

import math

import torch
from torch.profiler import record_function

from ..adapters import activate, adapter_parameters, adapter_state, base_parameters, load_adapter_state, with_adapters
from ..calls import step_optimizer
from ..errors import ModelCollapsed
from ..zo import mix, zo_engine
from .base import Method
from .penalty import LOWER, UPPER, UpperObjective, phi_gradient

class BilevelZOFO(Method):
    """The state of one Bilevel ZOFO run and its two kinds of step."""

    name = "bilevel"

    def __init__(self, model, tasks, config, trajectory):
        super().__init__(model, tasks, config, trajectory)
        self.data, settings = tasks.single, config.bilevel
        self.K, self.lam = settings.k, settings.lam
        self.evaluated_adapter = UPPER if settings.eval_adapter == "upper" else LOWER
        self._schedule = self._cycle_ends()
        # same-point with one-sided SPSA: F(θ) takes φ's two losses from the forwards of φ's gradient
        self.reuse_phi_forwards = settings.order == "same-point" and config.zo.one_sided
        self.peft_model = with_adapters(model, config.adapter, [UPPER, LOWER], config.seed, same_start=True)
        self.zo = zo_engine(self.peft_model, base_parameters(self.peft_model), config.zo, config.lr)  # over θ
        self.f_coefficients = UpperObjective.coefficients(self.lam, self.zo.space.device)
        phi_lr = config.lr if settings.optimizer == "shared" else settings.upper_lr
        self.phi_optimizer = torch.optim.Adam(adapter_parameters(self.peft_model, UPPER), lr=phi_lr)
        self.z_optimizer = torch.optim.Adam(adapter_parameters(self.peft_model, LOWER), lr=settings.lower_lr)
        ft, peft = self.data.split(config.seed)
        self.ft_sampler = self.data.sampler(config.batch_size, mix(config.seed, 1), ft)
        self.peft_sampler = self.data.sampler(config.batch_size, mix(config.seed, 2), peft)
        self.split_sizes = {"ft": len(ft), "peft": len(peft)}

    @property
    def model(self):
        """θ with the evaluated adapter (φ, or z with bilevel.eval_adapter lower) active."""
        activate(self.peft_model, self.evaluated_adapter)
        return self.peft_model

    def schedule(self) -> list[int]:
        """The counted step at the end of each cycle (lower and upper steps counted together)."""
        return self._schedule

    def _cycle_ends(self) -> list[int]:
        steps, K = self.config.steps, self.K
        if self.config.bilevel.cycle == "paper":
            return [t * (K + 1) for t in range(1, steps // (K + 1) + 1)]
        ends, done = [], 0
        while done < steps:  # the authors': K lower steps, later K − 1, each group followed by an upper step
            done = min(done + (K if not ends else K - 1) + 1, steps)
            ends.append(done)
        return ends

    def cycle(self, iteration: int) -> tuple[int, bool]:
        """(lower steps, whether an upper step follows) of a cycle."""
        schedule = self.schedule()
        length = schedule[iteration] - (schedule[iteration - 1] if iteration else 0)
        lower = self.K if iteration == 0 or self.config.bilevel.cycle == "paper" else self.K - 1
        return (lower, True) if length == lower + 1 else (length, False)

    def step(self, iteration: int) -> dict:
        t = iteration + 1
        lower, upper = self.cycle(iteration)
        lower_losses = self.lower_level([self.peft_sampler.next() for _ in range(lower)])
        log = {"lower_loss": lower_losses[-1]} if lower_losses else {}
        if upper:
            ft_loss, p_loss, estimate = self.upper_step(self.ft_sampler.next(), self.peft_sampler.next(),
                                                        mix(self.config.seed, t), step=self.schedule()[iteration])
            log.update(train_loss=ft_loss, penalty_phi=p_loss, upper_objective=estimate.loss)
        return log

    def lower_level(self, peft_batches: list[list]) -> list[torch.Tensor]:
        """K steps z ← Adam_z.step(∇_z L(θ, z; B)), one per minibatch B of D_PEFT; θ and φ untouched.
        z stays the active adapter for all K steps, and the losses stay on the device."""
        with record_function("bilevel.lower_level"):
            activate(self.peft_model, LOWER)
            losses = []
            for peft_batch in peft_batches:
                losses.append(self.data.gradient(self.peft_model, peft_batch, self.z_optimizer))
                step_optimizer(self.z_optimizer)
            activate(self.peft_model, UPPER)
        return losses

    def phi_gradient(self, ft_batch: list, peft_batch: list) -> tuple[torch.Tensor, torch.Tensor]:
        """Accumulate ∇_φ [L(θ,φ;B_FT) + λ·L(θ,φ;B_P)] in φ's .grad, as two backward passes: the
        activations held at once are those of one minibatch, as in a first-order PEFT step.
        Returns the two losses, detached (on several processes: gradient and losses averaged over the ranks)."""
        return phi_gradient(self.peft_model, self.data, self.phi_optimizer, ft_batch, peft_batch, self.lam)

    def phi_update(self) -> None:
        step_optimizer(self.phi_optimizer)

    def upper_step(self, ft_batch: list, peft_batch: list, seed: int, step: int):
        """φ by its exact gradient and θ by SPSA on F, in the configured order; z untouched."""
        with record_function("bilevel.phi_gradient"):  # the labels show in torch.profiler traces
            ft_loss, p_loss = self.phi_gradient(ft_batch, peft_batch)
        if self.config.bilevel.order == "phi-first":
            self.phi_update()
        with record_function("bilevel.theta_step"):
            objective = UpperObjective(self.peft_model, self.data, ft_batch, peft_batch, self.lam,
                                       separate=self.reuse_phi_forwards)
            at_theta = objective.given_phi_parts(ft_loss, p_loss) if self.reuse_phi_forwards else None
            estimate = self.zo_step(objective.parts, seed, step, at_theta=at_theta, weight=objective.weights(),
                                    coefficients=self.f_coefficients)
            activate(self.peft_model, UPPER)  # an odd number of evaluations of F leaves z active
        if self.config.bilevel.order == "same-point":
            self.phi_update()  # from the gradient at the point where F was estimated
        return ft_loss, p_loss, estimate

    def forward_passes_per_upper_cycle(self) -> int:
        """Forward passes over one minibatch each (a lower batch, B_FT or B_P) in one upper step and its
        K lower steps, however they are grouped into model calls; K + 2 of them carry a backward."""
        reused = 2 if self.reuse_phi_forwards else 0  # F(θ)'s φ losses come from φ's gradient passes
        return self.K + 2 + 3 * self.zo.spsa.evaluations - reused

    # --- state -----------------------------------------------------------------------------------

    def snapshot(self) -> dict:
        return {"phi": adapter_state(self.peft_model, UPPER), "z": adapter_state(self.peft_model, LOWER)}

    def restore(self, step: int, snapshot: dict) -> None:
        super().restore(step, snapshot)  # θ from the trajectory
        load_adapter_state(self.peft_model, UPPER, snapshot["phi"])
        load_adapter_state(self.peft_model, LOWER, snapshot["z"])

    def state_dict(self) -> dict:  # φ and z themselves are the snapshot's
        return {"phi_optimizer": self.phi_optimizer.state_dict(), "z_optimizer": self.z_optimizer.state_dict(),
                "ft_sampler": self.ft_sampler.state_dict(), "peft_sampler": self.peft_sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.phi_optimizer.load_state_dict(state["phi_optimizer"])
        self.z_optimizer.load_state_dict(state["z_optimizer"])
        self.ft_sampler.load_state_dict(state["ft_sampler"])
        self.peft_sampler.load_state_dict(state["peft_sampler"])

    @property
    def other_adapter(self) -> tuple[str, str]:
        """The adapter not evaluated, and its name in logs and metrics."""
        return (LOWER, "theta_z") if self.evaluated_adapter == UPPER else (UPPER, "theta_phi")

    def evaluation_log(self, iteration: int) -> dict:
        """θ with the other adapter's validation loss, and the first-order steps each adapter has taken so far
        (z one per lower step, φ one per upper step): θ+z's curve against FO-PEFT's at the same number of
        first-order steps (`zofo report`'s val_loss_first_order_steps.png)."""
        other, label = self.other_adapter
        activate(self.peft_model, other)
        try:
            loss = self.tasks.validation_loss(self.peft_model)
        except ModelCollapsed:  # logged, not selected on: only the evaluated adapter's collapse stops a run
            loss = math.nan
        finally:
            activate(self.peft_model, self.evaluated_adapter)
        upper_steps = sum(self.cycle(i)[1] for i in range(iteration + 1))
        return {f"val_loss_{label}": loss if math.isfinite(loss) else None,
                "lower_steps": self.schedule()[iteration] - upper_steps, "upper_steps": upper_steps}

    def other_tests(self, evaluate) -> dict:
        """At the selected step: the other adapter with θ, and θ alone (where does the gain come from?)."""
        other, label = self.other_adapter
        activate(self.peft_model, other)
        results = {f"test_{label}": evaluate(self.peft_model)}
        activate(self.peft_model, self.evaluated_adapter)
        with self.peft_model.disable_adapter():
            results["test_theta_alone"] = evaluate(self.peft_model)
        return results

    def finish(self):
        if self.evaluated_adapter == LOWER:  # z is saved in φ's place, under peft's default name
            load_adapter_state(self.peft_model, LOWER, adapter_state(self.peft_model, LOWER), into=UPPER)
            self.evaluated_adapter = UPPER
        activate(self.peft_model, UPPER)
        self.peft_model.delete_adapter(LOWER)
        return super().finish()

    def summary(self) -> dict:
        upper_steps = sum(self.cycle(i)[1] for i in range(len(self.schedule())))
        return {**super().summary(), "upper_steps": upper_steps, "evaluated_adapter": self.config.bilevel.eval_adapter,
                "split": self.split_sizes,
                "forward_passes_per_upper_cycle": self.forward_passes_per_upper_cycle()}
