"""The zeroth-order machinery of one parameter set, built from a ZOConfig: the space of parameters,
the SPSA estimator over it and the ZO optimizer that consumes its estimates."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ZOConfig
from .optimizers import ZOOptimizer, make_zo_optimizer
from .space import ParameterSpace
from .spsa import SPSA
from .trajectory import Trajectory, replay


@dataclass
class ZOEngine:
    space: ParameterSpace
    spsa: SPSA
    optimizer: ZOOptimizer

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
