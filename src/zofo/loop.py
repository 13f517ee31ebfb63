"""The run loop every method shares: iterations, evaluation schedule, selection, checkpoints, resume.

    for each iteration of the method (one counted step, or a Bilevel cycle of K + 1):
        log ← method.step(iteration)                    # losses stay on the device; flushed in groups
        if the iteration crosses a multiple of eval_every, is the last, or ends a stage:
            val ← validation loss of the method's model
            keep the method's snapshot if val is the lowest so far
            checkpoint: the method's state, the selection, the iteration (atomic; the log and the
                        trajectory are cut back to it on resume)
            a tuning run whose val is over EXPLODED × a uniform guess's ends there, its best step standing
        if it crosses a multiple of checkpoint_every (0: never): checkpoint, no evaluation
        if SIGTERM came (a sweep or a GPU lease ending): checkpoint this iteration, stop (RunStopped)
    if the loss became NaN or the model collapsed: fail, or (on_divergence: test-best, a step selected so far)
        end the loop there, that step tested as the run's
    back to the selected step (the caller): a method rebuilt at its start point, restored to that step

Resuming loads the checkpoint into a method at its start point (θ replayed from the trajectory), so a
run killed at any point ends as the uninterrupted run ends: same metrics, and in fp32 the same weights.

On several processes (distributed.py) every rank runs this loop in step: the logged losses and the
validation loss are already the same on every rank, rank 0 alone writes, and every `weight_check_every`
steps the ranks compare their weights.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from tqdm.auto import tqdm

from . import distributed
from .errors import Diverged, FarOff, ModelCollapsed, RunStopped, StopOnSigterm, diverged
from .methods.base import Method, Selection
from .runs import RunFolder

FLUSH_EVERY = 16  # iterations whose logged values wait on the device before one synchronisation
# A tuning run whose validation loss passes EXPLODED times a uniform guess's (ln of the number of candidates) ends
# there: its best step so far stands as its result, or, where no evaluation came under it, the run diverged. Of the
# 246 tuning runs in results/ with logs (sessions 9-25), 39 passed it (Bilevel with λ × θ's rate ≥ 1e-3, MeZO at too
# high a rate) and not one came back under it; every other run's best stayed under 5 times. They ran 17,478 steps
# past it, most of them Bilevel steps, the dearest.
EXPLODED = 10


def due(schedule: list[int], iteration: int, every: int) -> bool:
    """Evaluate after `iteration` if it crosses a multiple of `every` counted steps, or is the last."""
    previous = schedule[iteration - 1] if iteration else 0
    return schedule[iteration] // every > previous // every or iteration == len(schedule) - 1


class PendingLog:
    """Logged values of recent iterations, written to log.jsonl together (one host sync per group)."""

    def __init__(self, run: RunFolder, dtype: str):
        self.run, self.dtype, self.records = run, dtype, []

    def add(self, step: int, values: dict[str, Any]) -> None:
        self.records.append((step, values))

    def flush(self, check: bool = True) -> dict[str, float]:
        last = {}
        records, self.records = self.records, []
        for step, values in records:
            record = {"step": step, **{k: plain(v) for k, v in values.items() if v is not None}}
            self.run.log(record)
            bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
            if bad and check:
                raise diverged(bad[0], record[bad[0]], step, self.dtype)
            last = record
        return last


def end_if_far_off(selection: Selection, step: int, val_loss: float, uniform_guess_loss: float | None) -> None:
    """Mark a tuning run to end here if its validation loss is over EXPLODED times a uniform guess's; FarOff if
    every evaluation so far was."""
    if not uniform_guess_loss or val_loss <= EXPLODED * uniform_guess_loss:
        return
    far_off = (f"the validation loss {val_loss:.4g} at step {step} is over {EXPLODED} times a uniform guess's "
               f"({uniform_guess_loss:.4f})")
    if selection.val_loss > EXPLODED * uniform_guess_loss:
        raise FarOff(f"{far_off}, and no evaluation before was under it; a tuning run that far off does not come back")
    selection.ended_early = {"step": step, "val_loss": val_loss, "uniform_guess_loss": uniform_guess_loss}
    distributed.print_main(f"{far_off}: this tuning run ends here, its best step ({selection.step}, validation loss "
                           f"{selection.val_loss:.4g}) standing as its result")


def plain(value):
    return value.item() if isinstance(value, torch.Tensor) else value


def train(method: Method, run: RunFolder, resume_state: dict | None = None, extra_state: dict | None = None) -> Selection:
    """Run `method` to its last iteration and return the selection (the caller comes back to the selected
    step with a method at its start point, once this one is released). `extra_state` is stored in every
    checkpoint (zero-shot metrics)."""
    config, schedule = method.config, method.schedule()
    selection, first, seconds_before = Selection(), 0, 0.0
    if resume_state is not None:
        first, seconds_before = resume_state["iteration"], resume_state["train_seconds"]
        selection.load_state_dict(resume_state["selection"])
        selection.train_seconds = seconds_before  # kept if no step is left (killed during the test)
        method.restore(schedule[first - 1], resume_state["method"]["snapshot"])
        method.load_state_dict(resume_state["method"]["state"])
        run.keep_until(schedule[first - 1])
    else:
        method.begin()
    log, started = PendingLog(run, config.dtype), time.perf_counter()
    done = schedule[first - 1] if first else 0
    progress = tqdm(total=schedule[-1], initial=done, desc=method.name, unit="step", dynamic_ncols=True,
                    disable=not distributed.is_main())

    stop = StopOnSigterm(enabled=not distributed.active())
    last = first if selection.ended_early else len(schedule)  # resumed once it had ended early: no step left
    uniform_guess_loss = None if config.test else method.tasks.uniform_guess_loss  # tested runs never end early
    try:
        for iteration in range(first, last):
            step = schedule[iteration]
            log.add(step, method.step(iteration))
            progress.update(step - done)
            done = step
            check_weights = distributed.active() and config.weight_check_every
            if check_weights and due(schedule, iteration, config.weight_check_every):
                distributed.check_same_weights(method.model, step)  # every rank took the same steps
            evaluate = due(schedule, iteration, config.eval_every) or method.must_evaluate(iteration)
            checkpoint = evaluate or stop.requested or bool(
                config.checkpoint_every and due(schedule, iteration, config.checkpoint_every))
            if checkpoint or len(log.records) >= FLUSH_EVERY:  # the log holds every step a checkpoint holds
                shown = log.flush()
                progress.set_postfix({k: f"{v:.3f}" for k, v in shown.items() if k != "step" and isinstance(v, float)})
            if evaluate:
                try:
                    val_loss = method.validation_loss()
                except ModelCollapsed as error:
                    raise ModelCollapsed(f"at step {step}, {error}. The log keeps the steps before it, and the run "
                                         "folder its last checkpoint") from None
                if not math.isfinite(val_loss):
                    raise diverged("the validation loss", val_loss, step, config.dtype)
                run.log({"step": step, "val_loss": val_loss, **method.evaluation_log(iteration)})
                selection.update(step, val_loss, method)
                method.evaluated(iteration, val_loss, selection)
                progress.set_postfix(val=f"{val_loss:.3f}", best=selection.step)
                end_if_far_off(selection, step, val_loss, uniform_guess_loss)
            if checkpoint:
                selection.train_seconds = seconds_before + time.perf_counter() - started
                run.save_checkpoint({"iteration": iteration + 1, "step": step, "train_seconds": selection.train_seconds,
                                     "selection": selection.state_dict(),
                                     "method": {"snapshot": method.snapshot(), "state": method.state_dict()},
                                     **(extra_state or {})})
            if selection.ended_early:
                break
            if stop.requested:
                raise RunStopped(f"stopped by SIGTERM after step {step}, checkpointed there: the same command "
                                 "with --resume continues the run")
    except Diverged as error:
        if not (config.on_divergence == "test-best" and config.test and selection.step is not None):
            raise  # the caller's to report (experiment.finish_diverged)
        # the run ends here; the caller tests its step selected before the divergence
        selection.diverged = str(error)
        selection.train_seconds = seconds_before + time.perf_counter() - started
        distributed.print_main(f"diverged: {error}; the run ends here, its selected step: {selection.step}")
    finally:  # however the run ends, the steps it completed are in the log
        stop.restore()
        progress.close()
        log.flush(check=False)
    return selection
