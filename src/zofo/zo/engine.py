"""The zeroth-order machinery of one parameter set, built from a ZOConfig: the space of parameters,
the SPSA estimator over it and the ZO optimizer that consumes its estimates."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ZOConfig
from .optimizers import ZOOptimizer, make_zo_optimizer
from .space import ParameterSpace
from .spsa import SPSA, Estimate
from .trajectory import Trajectory, replay


@dataclass
class ZOEngine:
    space: ParameterSpace
    spsa: SPSA
    optimizer: ZOOptimizer

    @torch.no_grad()
    def changed_fraction(self, estimate: Estimate, sample: int = 4096) -> float:
        """The fraction of θ's elements (the first `sample` of each parameter) that the optimizer's first
        update along `estimate` changes in the weights' own dtype: near 0 where lr·|update| is below the
        dtype's resolution (bf16 weights of magnitude 0.02 ignore changes under about 6e-5)."""
        space, q, changed, total = self.space, len(estimate.seeds), 0, 0
        for segment in space.segments:
            n = min(sample, segment.numel)
            theta = space.view(segment)[:n].to(torch.float32)
            if space.displacement is not None:  # θ itself, before SPSA's last perturbation
                seed, scale = space.displacement
                theta = theta - scale * space.direction(seed, segment, 0, n)
            direction = sum(scalar / q * space.direction(seed, segment, 0, n)
                            for seed, scalar in zip(estimate.seeds, estimate.scalars))
            before = theta.to(segment.parameter.dtype)
            after = (before.to(torch.float32) - self.optimizer.lr * self.optimizer.first_update(direction))
            changed += (after.to(segment.parameter.dtype) != before).sum().item()
            total += n
        return changed / total

    def replay(self, trajectory: Trajectory, until: int | None = None) -> int:
        """θ moved by the logged steps up to `until` (the same passes as training, no forwards)."""
        return replay(trajectory, self.spsa, self.optimizer, until)


def zo_engine(model: torch.nn.Module, named_parameters, zo: ZOConfig, lr: float) -> ZOEngine:
    """SPSA and the ZO optimizer over `named_parameters` (names key the directions)."""
    space = ParameterSpace(named_parameters, pack=zo.perturbation != "per-module",
                           keep_origin=zo.perturbation == "exact")
    spsa = SPSA(space, zo.eps, zo.q, two_sided=not zo.one_sided, perturbation=zo.perturbation, model=model)
    optimizer = make_zo_optimizer(zo.optimizer, space, lr, zo.momentum, zo.weight_decay)
    return ZOEngine(space, spsa, optimizer)
