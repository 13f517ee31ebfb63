"""What every training method supplies to the run loop (loop.py), which owns everything else: the
evaluation schedule, selection of the best step by validation loss, checkpoints, resume and the run folder.

A method is built at its start point (a freshly loaded base model; adapters initialised from the seed)
and then moved one *iteration* at a time; an iteration is one counted step, or several (a Bilevel
cycle: K lower steps and one upper step). Everything a method does depends only on its start point,
the seed and the iteration number, so a run rebuilt from its start point and its checkpointed state
continues exactly as the uninterrupted run would have.

Where a method moves θ by zeroth-order steps, θ is never copied into a checkpoint: it is rebuilt from
the start point and the trajectory (seeds and scalars), which the method appends to as it steps.
"""

from __future__ import annotations

import math
import random
import warnings
from typing import Any

import torch

from .. import distributed
from ..config import RunConfig
from ..data import TaskSet
from ..errors import diverged
from ..adapters import base_parameters
from ..zo import Trajectory, ZOEngine, mix


class Method:
    name: str = ""
    model: torch.nn.Module  # θ with the adapter that is evaluated and saved
    zo: ZOEngine | None = None  # the zeroth-order machinery of the parameters it moves so, if any

    def __init__(self, model, tasks: TaskSet, config: RunConfig, trajectory: Trajectory):
        self.tasks, self.config, self.trajectory = tasks, config, trajectory

    # --- stepping --------------------------------------------------------------------------------

    def schedule(self) -> list[int]:
        """The counted step at the end of each iteration (1, 2, 3, ... for one step per iteration)."""
        return list(range(1, self.config.steps + 1))

    def must_evaluate(self, iteration: int) -> bool:
        """Evaluate after this iteration whatever the schedule says (the end of a stage)."""
        return False

    def begin(self) -> None:
        """Called once before the first iteration of a fresh run (not of a resumed one)."""
        if self.zo is not None:
            self.trajectory.start(self.zo.space.directions)

    def step(self, iteration: int) -> dict[str, Any]:
        """Advance one iteration (0-based); returns what to log, tensors left on the device."""
        raise NotImplementedError

    def validation_loss(self) -> float:
        """What selects the step: the validation loss of the model to test (mean over its tasks)."""
        return self.tasks.validation_loss(self.model)

    def evaluated(self, iteration: int, val_loss: float, best: "Selection") -> None:
        """Called after each evaluation, once the best step is updated."""

    def evaluation_log(self, iteration: int) -> dict[str, Any]:
        """Further values logged beside the validation loss at each evaluation (they select nothing)."""
        return {}

    # --- how to come back to a step -------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """What the selection keeps of the current state, to come back to it later (small: adapters;
        θ comes back through the trajectory)."""
        return {}

    def restore(self, step: int, snapshot: dict[str, Any]) -> None:
        """On a method at its start point: the state of `step`, as evaluated then."""
        if self.zo is not None:
            self.zo.replay(self.trajectory, until=step)

    def state_dict(self) -> dict[str, Any]:
        """Everything beyond the snapshot that the next iterations depend on (optimizer states, samplers)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def other_tests(self, evaluate) -> dict[str, Any]:
        """Further test metrics at the selected step, before finish(): {name: evaluate(model variant)}."""
        return {}

    def finish(self) -> torch.nn.Module:
        """The model to test and save: θ with the evaluated adapter, other adapters removed."""
        if self.zo is not None:
            self.zo.space.unpack()  # own storage per tensor again, for save_pretrained
        return self.model

    def summary(self) -> dict[str, Any]:
        """Method-specific facts for metrics.json."""
        facts = {}
        if self.zo is not None:
            facts.update(zo_parameters=self.zo.space.numel, zo_optimizer_state_bytes=self.zo.optimizer.state_bytes(),
                         trajectory_bytes=self.trajectory.path.stat().st_size,
                         zo_origin_bytes=self.zo.space.origin_bytes())
            if hasattr(self, "update_changed_fraction"):
                facts["first_update_changed_fraction"] = round(self.update_changed_fraction, 4)
        return facts

    @classmethod
    def replayed_parameters(cls, model, config: RunConfig):
        """(model, the named parameters the trajectory moves) at the start point, for `zofo replay`: θ,
        named as in the plain model, so that the trajectory of a method that trains adapters besides θ
        replays onto the plain model (the selected adapter is saved with the run)."""
        return model, base_parameters(model)

    # --- shared pieces ---------------------------------------------------------------------------

    def zo_step(self, objective, seed: int, step: int, at_theta=None, weight=1.0, coefficients=None) -> Any:
        """One SPSA estimate and ZO update of the engine's parameters, logged to the trajectory:
        the objective is evaluated at the perturbed points (θ left displaced by the last direction),
        then the optimizer's pass takes the displacement back and applies the update.
        On several processes the objective sees this rank's shard of the minibatch, whose loss is a mean over
        `weight` (TaskData.loss_weight): the losses are averaged over the ranks with these weights, so every
        rank holds the whole minibatch's losses and applies the same update. An objective over several
        minibatches returns its parts (a 1-D tensor), each with its weight; the objective is then
        Σ coefficients · parts, taken after the parts' means over the ranks."""

        def reduce(losses: torch.Tensor) -> torch.Tensor:
            losses = distributed.weighted_mean(losses, weight)
            return losses if coefficients is None else (losses * coefficients).sum(-1)

        estimate = self.zo.spsa.estimate(objective, seed, at_theta=at_theta, reduce=reduce)
        check_finite(estimate.losses, step, seed, self.config.dtype)
        if self.zo.optimizer.steps == 0 and self.config.lr > 0:
            self.check_update_resolution(estimate)
        self.zo.optimizer.step(estimate)
        self.trajectory.append(step, seed, estimate.scalars, self.zo.optimizer.lr)
        return estimate

    def check_update_resolution(self, estimate) -> None:
        """Warn, at the first ZO step, when most of θ would not move: the update is below the dtype's
        resolution (an upper learning rate of 1e-7 on bf16 weights), so training θ does nothing."""
        self.update_changed_fraction = self.zo.changed_fraction(estimate)
        if self.update_changed_fraction < RESOLUTION_WARNING:
            advice = "raise --lr" + (" or train in fp32" if self.config.dtype != "fp32" else "")
            warnings.warn(f"the first zeroth-order update changed only {self.update_changed_fraction:.1%} of the "
                          f"sampled weights: at lr {self.config.lr:g} most of it is below the resolution of "
                          f"{self.config.dtype} weights and is lost; {advice}", stacklevel=2)


RESOLUTION_WARNING = 0.5  # fraction of θ's elements the first update must change


def sample_tasks(seed: int, t: int, tasks: int, per_step: int) -> list[int]:
    """The training tasks of a meta-training method's iteration t: `per_step` of them, without
    replacement, drawn from the seed and t alone (so a resumed run draws the same)."""
    return sorted(random.Random(mix(seed, 4, t)).sample(range(tasks), min(per_step, tasks)))


def check_finite(values: list[float], step: int, seed: int | None, dtype: str) -> None:
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        raise diverged("the training loss", bad[0], step, dtype, seed)


class Selection:
    """The evaluated step of lowest validation loss so far, and the method's snapshot there."""

    def __init__(self):
        self.step: int | None = None
        self.val_loss = float("inf")
        self.snapshot: dict[str, Any] = {}
        self.train_seconds = 0.0
        self.diverged: str | None = None  # how the run diverged, where it ended there (on_divergence: test-best)
        self.ended_early: dict | None = None  # where a tuning run ended, far off (loop.EXPLODED)

    def update(self, step: int, val_loss: float, method: Method) -> bool:
        if val_loss < self.val_loss:
            self.step, self.val_loss, self.snapshot = step, val_loss, method.snapshot()
            return True
        return False

    def state_dict(self) -> dict:
        return {"step": self.step, "val_loss": self.val_loss, "snapshot": self.snapshot, "ended_early": self.ended_early}

    def summary(self) -> dict:
        summary = {"best_step": self.step, "best_val_loss": self.val_loss, "train_seconds": round(self.train_seconds, 2)}
        return (summary | ({"diverged": self.diverged} if self.diverged else {})
                | ({"ended_early": self.ended_early} if self.ended_early else {}))

    def load_state_dict(self, state: dict) -> None:
        self.step, self.val_loss, self.snapshot = state["step"], state["val_loss"], state["snapshot"]
        self.ended_early = state.get("ended_early")  # absent from an older zofo's checkpoints
