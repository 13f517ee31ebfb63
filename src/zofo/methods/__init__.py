"""Training methods. Each is one file with a Method subclass (methods/base.py) that reads like the
paper's algorithm box; the run loop (loop.py) does the rest. Methods never import each other."""

from ..errors import Diverged, ModelCollapsed, NonFiniteLoss
from .base import Method
from .bilevel import BilevelZOFO
from .first_order import FirstOrder
from .meta_bilevel import MetaBilevelZOFO
from .meta_icl import MetaICL
from .meta_mezo import MetaMeZO
from .mezo import MeZO
from .two_stage import TwoStage

METHODS: dict[str, type[Method]] = {"fo": FirstOrder, "mezo": MeZO, "bilevel": BilevelZOFO, "two-stage": TwoStage,
                                    "meta-bilevel": MetaBilevelZOFO, "meta-mezo": MetaMeZO, "meta-icl": MetaICL}

__all__ = ["METHODS", "Method", "Diverged", "ModelCollapsed", "NonFiniteLoss", "BilevelZOFO", "FirstOrder", "MeZO", "TwoStage"]
