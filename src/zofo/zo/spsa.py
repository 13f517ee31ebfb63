"""SPSA: a zeroth-order gradient estimate kept as (seed, scalar) pairs.

    for i = 1 .. q:  u_i ~ N(0, I) from seed s_i (regenerated, never stored)
        two-sided:  g_i = [ f(θ + εu_i) − f(θ − εu_i) ] / (2ε)
        one-sided:  g_i = [ f(θ + εu_i) − f(θ) ] / ε
    ∇f(θ) ≈ (1/q) Σ_i g_i u_i

The objective is any callable returning a loss: a tensor on the model's device (nothing is
differentiated), or a number computed on the host (−F1 of generated answers). The losses of one
estimate stay on the device until all are computed, then pass through `reduce` (the one place where a
distributed run all-reduces them) and reach the host in a single synchronisation.

Perturbation, in "in-place" mode (MeZO's): θ itself is displaced to θ ± εu; after the last evaluation
it stays displaced (ParameterSpace.displacement) and the optimizer's step takes the displacement back in
the same pass as its update (three passes over θ per two-sided step), or space.restore() alone does.
In "exact" mode the space keeps a copy of θ (its origin): θ ± εu is written from it in one rounding and
restored by a copy, so nothing drifts, at in-place's speed and the memory of θ once more. In "per-module"
mode θ is never modified: each module sees its perturbed weights only during its own forward
(ParameterSpace.perturbed_on_the_fly), at the cost of extra copies per forward and no CUDA graphs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .space import ParameterSpace, mix

PERTURBATIONS = ("in-place", "exact", "per-module")


@dataclass
class Estimate:
    """∇ ≈ (1/q) Σ scalars[i] · u(seeds[i])."""

    seeds: list[int]
    scalars: list[float]
    losses: list[float]  # every objective value, in the order evaluated

    @property
    def loss(self) -> float:
        """The mean objective value at the evaluated points (MeZO's logged training loss)."""
        return sum(self.losses) / len(self.losses)


def identity(losses: torch.Tensor) -> torch.Tensor:
    return losses


class SPSA:
    def __init__(self, space: ParameterSpace, eps: float = 1e-3, q: int = 1, two_sided: bool = True,
                 perturbation: str = "in-place", model: torch.nn.Module | None = None,
                 reduce: Callable[[torch.Tensor], torch.Tensor] = identity):
        if q < 1:
            raise ValueError(f"q (directions per step) must be >= 1, got {q}")
        if perturbation not in PERTURBATIONS:
            raise ValueError(f"perturbation must be one of {PERTURBATIONS}, got {perturbation!r}")
        if perturbation == "per-module" and model is None:
            raise ValueError("per-module perturbation hooks the model's modules: pass model=")
        if perturbation == "exact" and space.origins is None:
            raise ValueError("exact perturbation writes θ ± εu from a copy of θ: build ParameterSpace(..., keep_origin=True)")
        self.space, self.eps, self.q, self.two_sided = space, eps, q, two_sided
        self.perturbation, self.model, self.reduce = perturbation, model, reduce

    def seeds(self, step_seed: int) -> list[int]:
        return [mix(step_seed, i) for i in range(self.q)]

    @property
    def evaluations(self) -> int:
        """Objective evaluations per estimate."""
        return 2 * self.q if self.two_sided else self.q + 1

    @torch.no_grad()
    def estimate(self, objective: Callable, step_seed: int, at_theta=None,
                 reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Estimate:
        """Evaluate `objective` at the perturbed points of this step's directions. In place, θ is left
        displaced by the last direction (space.displacement) for the optimizer's step to take back.
        at_theta: f(θ) when the caller already has it (one-sided only): it is not evaluated again.
        reduce: this estimate's hook for the losses (a data-parallel step's, which knows the rank's rows),
        instead of the estimator's own."""
        if at_theta is not None and self.two_sided:
            raise ValueError("at_theta is f(θ), which only one-sided SPSA uses")
        self.space.check_restored("start an estimate")
        seeds, values = self.seeds(step_seed), []
        if not self.two_sided:
            values.append(objective() if at_theta is None else at_theta)
        for i, seed in enumerate(seeds):
            signs = (1, -1) if self.two_sided else (1,)
            for sign in signs:
                values.append(self._evaluate(objective, seed, sign))
            if self.perturbation != "per-module" and i < len(seeds) - 1:
                self.space.restore()
        losses = (reduce or self.reduce)(torch.stack([torch.as_tensor(v, dtype=torch.float32, device=self.space.device)
                                          for v in values])).tolist()  # the one host synchronisation
        if self.two_sided:
            scalars = [(losses[2 * i] - losses[2 * i + 1]) / (2 * self.eps) for i in range(len(seeds))]
        else:
            scalars = [(losses[i + 1] - losses[0]) / self.eps for i in range(len(seeds))]
        return Estimate(seeds, scalars, losses)

    def _evaluate(self, objective: Callable, seed: int, sign: int):
        if self.perturbation == "per-module":
            with self.space.perturbed_on_the_fly(self.model, seed, sign * self.eps):
                return objective()
        # In place: to θ + εu from θ, to θ − εu from θ + εu.
        self.space.displace(seed, self.eps if sign > 0 else -2 * self.eps)
        return objective()

    def replay(self, step_seed: int, scalars: list[float]) -> Estimate:
        """The same passes over θ as `estimate` (and so the same round-off), without any forward."""
        estimate = self.estimate(lambda: 0.0, step_seed)
        return Estimate(estimate.seeds, list(scalars), [])
