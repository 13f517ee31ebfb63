"""The errors a person can act on. The command line prints their message alone (exit code 2), so each
message names the file, field or value at fault and what to do about it."""

import signal
import threading


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


class FarOff(Diverged):
    """A tuning run's validation loss was never within loop.EXPLODED times a uniform guess's."""


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
    """A training run stopped at SIGTERM, checkpointed at its last completed iteration, or a sweep whose runs
    did so (not an error: the command line exits 143 with the message; --resume, or the same sweep, continues)."""


class StopOnSigterm:
    """SIGTERM (a sweep or a GPU lease ending) sets `requested`, which the caller checks at a safe point: a
    training loop stops after the iteration under way with a checkpoint there, rather than losing every step
    since the last evaluation; a sweep stops its runs and notes the choices its tuning runs have made. Not in a
    data-parallel run (its ranks could stop at different iterations) nor off the main thread: there SIGTERM
    keeps its default. The handler is ours from construction until `restore()`."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self.previous = signal.signal(signal.SIGTERM, self.request) if self.enabled else None

    def request(self, signum, frame) -> None:
        self.requested = True

    def restore(self) -> None:
        if self.enabled:
            signal.signal(signal.SIGTERM, self.previous)
