"""The zeroth-order engine: where a gradient estimate comes from (SPSA over a ParameterSpace)
and how parameters move with it (ZO optimizers), kept apart so that any method can combine them."""

from .engine import ZOEngine, zo_engine
from .optimizers import ZO_OPTIMIZERS, ZOAdam, ZOOptimizer, ZOSGD, ZOSignSGD, is_decayed, make_zo_optimizer
from .space import ParameterSpace, mix
from .spsa import PERTURBATIONS, SPSA, Estimate
from .trajectory import Trajectory, replay

__all__ = [
    "ZOEngine", "zo_engine", "ZO_OPTIMIZERS", "ZOAdam", "ZOOptimizer", "ZOSGD", "ZOSignSGD", "is_decayed",
    "make_zo_optimizer", "ParameterSpace", "mix", "PERTURBATIONS", "SPSA", "Estimate", "Trajectory", "replay",
]
