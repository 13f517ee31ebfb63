"""Training methods. Each is one file with a `train(model, data, config, run)` function that reads
like the paper's algorithm box and returns (model to evaluate, {"best_step", "best_val_loss", ...})."""

from . import bilevel, first_order, mezo, two_stage

METHODS = {"fo": first_order.train, "mezo": mezo.train, "bilevel": bilevel.train, "two-stage": two_stage.train}


def get_method(name: str):
    if name not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {name!r}")
    return METHODS[name]
