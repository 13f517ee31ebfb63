"""SPSA: a zeroth-order gradient estimate kept as (seed, scalar) pairs.

    for i = 1 .. q:  u_i ~ N(0, I) from seed s_i (regenerated, never stored)
        two-sided:  g_i = [ f(θ + εu_i) − f(θ − εu_i) ] / (2ε)
        one-sided:  g_i = [ f(θ + εu_i) − f(θ) ] / ε
    ∇f(θ) ≈ (1/q) Σ_i g_i u_i

The objective is any callable returning a number (a loss, or −F1 of generated answers): nothing is
differentiated. In "in-place" mode θ itself is moved to θ ± εu and the last restore is left
pending, for the optimizer to fuse with its update (two-sided, q = 1: three passes over θ per
step). In "exact" mode θ is never modified: each module sees its perturbed weights only during its
own forward (see ParameterSpace.perturbed_on_the_fly), at the cost of extra copies per forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .space import ParameterSpace, mix

PERTURBATIONS = ("in-place", "exact")


@dataclass
class Estimate:
    """∇ ≈ (1/q) Σ scalars[i] · u(seeds[i]); θ still carries pending_scale · u(pending_seed) if set."""

    seeds: list[int]
    scalars: list[float]
    losses: list[float] = field(default_factory=list)  # every objective value computed, in order
    pending_seed: int | None = None
    pending_scale: float = 0.0

    @property
    def loss(self) -> float:
        """The mean objective value at the perturbed points (MeZO's logged training loss)."""
        return sum(self.losses) / len(self.losses)


class SPSA:
    def __init__(self, space: ParameterSpace, eps: float = 1e-3, q: int = 1, two_sided: bool = True,
                 perturbation: str = "in-place", model: torch.nn.Module | None = None):
        if q < 1:
            raise ValueError(f"q (perturbations per step) must be >= 1, got {q}")
        if perturbation not in PERTURBATIONS:
            raise ValueError(f"perturbation must be one of {PERTURBATIONS}, got {perturbation!r}")
        if perturbation == "exact" and model is None:
            raise ValueError("exact perturbation hooks the model's modules: pass model=")
        self.space, self.eps, self.q, self.two_sided = space, eps, q, two_sided
        self.perturbation, self.model = perturbation, model

    def seeds(self, step_seed: int) -> list[int]:
        return [mix(step_seed, i) for i in range(self.q)]

    @torch.no_grad()
    def estimate(self, objective: Callable[[], float], step_seed: int, at_theta: float | None = None) -> Estimate:
        """at_theta: f(θ) when the caller already has it (one-sided only), so that it is not evaluated again."""
        if at_theta is not None and self.two_sided:
            raise ValueError("at_theta is f(θ), which only one-sided SPSA uses")
        seeds, scalars, losses = self.seeds(step_seed), [], []
        evaluate = self._evaluate_exact if self.perturbation == "exact" else self._evaluate_in_place
        base = None
        if not self.two_sided:
            base = float(objective()) if at_theta is None else float(at_theta)
            losses.append(base)
        estimate = Estimate(seeds, scalars, losses)
        for i, seed in enumerate(seeds):
            last = i == len(seeds) - 1
            if self.two_sided:
                f_plus, f_minus = evaluate(objective, seed, estimate, last)
                scalars.append((f_plus - f_minus) / (2 * self.eps))
                losses += [f_plus, f_minus]
            else:
                (f_plus,) = evaluate(objective, seed, estimate, last)
                scalars.append((f_plus - base) / self.eps)
                losses.append(f_plus)
        return estimate

    def replay(self, step_seed: int, scalars: list[float]) -> Estimate:
        """The same passes over θ as `estimate` (and so the same round-off), without any forward."""
        estimate = self.estimate(lambda: 0.0, step_seed)
        estimate.scalars, estimate.losses = list(scalars), []
        return estimate

    def _evaluate_in_place(self, objective, seed: int, estimate: Estimate, last: bool) -> tuple[float, ...]:
        eps, space = self.eps, self.space
        space.add_direction(seed, eps)  # θ + εu
        values = [float(objective())]
        back = eps
        if self.two_sided:
            space.add_direction(seed, -2 * eps)  # θ − εu
            values.append(float(objective()))
            back = -eps
        if last:  # the optimizer adds εu back in the same pass as its update
            estimate.pending_seed, estimate.pending_scale = seed, -back
        else:
            space.add_direction(seed, -back)
        return tuple(values)

    def _evaluate_exact(self, objective, seed: int, estimate: Estimate, last: bool) -> tuple[float, ...]:
        with self.space.perturbed_on_the_fly(self.model, seed, self.eps):
            values = [float(objective())]
        if self.two_sided:
            with self.space.perturbed_on_the_fly(self.model, seed, -self.eps):
                values.append(float(objective()))
        return tuple(values)
