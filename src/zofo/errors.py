"""The errors a person can act on. The command line prints their message alone (exit code 2), so each
message names the file, field or value at fault and what to do about it."""


class ZofoError(ValueError):
    pass


class ConfigError(ZofoError):
    """A configuration value is wrong: the field, the value and what is allowed."""


class DataError(ZofoError):
    """Task data is missing or malformed: the file, the line and the problem."""


class RunFolderError(ZofoError):
    """The run folder cannot be used as asked."""


class RecordError(ZofoError):
    """A file a run wrote is unreadable: the file and the line."""


class Diverged(ZofoError):
    """Training diverged: a tuning run that did has a result (its values are never chosen); any other run fails."""


class NonFiniteLoss(Diverged):
    """The loss became NaN or infinite: the step (and the direction's seed)."""


class ModelCollapsed(Diverged):
    """The model scores every candidate alike: its loss is finite, and lower than a working model's."""


def diverged(what: str, value: float, step: int, dtype: str, seed: int | None = None) -> NonFiniteLoss:
    """The error for a loss that became NaN or infinite: where, and what to try."""
    where = f"step {step}" + (f" (direction seed {seed})" if seed is not None else "")
    advice = "lower the learning rate" + (" or train in fp32" if dtype != "fp32" else "")
    return NonFiniteLoss(f"{what} became {value} at {where}: {advice}. The log keeps the steps before it, "
                         "and the run folder its last checkpoint")


class RankLost(ZofoError):
    """A data-parallel run lost one of its processes (it died, or hung past the timeout)."""


class RanksDiverged(ZofoError):
    """The processes of a data-parallel run hold different weights: the first tensor that differs."""


class RunStopped(Exception):
    """A training run stopped at SIGTERM, checkpointed at its last completed iteration (not an error: the
    command line exits 143 with the message, and --resume continues the run)."""
