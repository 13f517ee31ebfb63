"""One training run from a config: check, load, evaluate zero-shot, train, select, test, write the run folder.

Everything that can be checked without the model is checked first (config values, device, run folder,
model source, task data), so that a wrong value never costs the minutes of loading and zero-shot scoring.
"""

from __future__ import annotations

import platform
import time

import torch

from . import distributed, loop
from .adapters import base_entries
from .calls import model_calls
from .config import META_METHODS, RunConfig
from .data import TaskSet, metaicl_task_data, prepare_tasks
from .errors import Diverged
from .meta_test import MODES, meta_test
from .methods import METHODS, Method
from .tasks import metaicl
from .models import check_model, load_model, load_tokenizer, resolve_device
from .runs import RunFolder
from .zo import Trajectory


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def load_base_model(config: RunConfig, device: torch.device):
    """The base model at the run's start point; with --shard-weights split over the ranks (FSDP2), loaded into
    CPU memory first: FSDP2 moves each decoder layer to the device as it splits it, so a rank's device never
    holds more than its shards and one whole layer (its CPU memory holds the whole model once)."""
    model, _ = load_model(config.model, config.dtype, "cpu" if config.shard_weights else str(device), seed=config.seed)
    if config.shard_weights:
        distributed.shard_weights(model, device)
    return model


def save_results(model, tokenizer, config: RunConfig, run: RunFolder) -> None:
    """The adapter with peft's save_pretrained; the base weights, where the method trained them, as a
    plain transformers folder (the adapter is taken off first, so `from_pretrained` loads θ alone).
    Rank 0 writes; sharded weights are gathered to it first (every rank takes part; adapters are whole on each)."""
    save_base = config.trains_base_model and config.save_model
    base = model.get_base_model() if hasattr(model, "peft_config") else model  # LoRA layers still in place
    gathered = distributed.full_state_dict(base) if save_base and config.shard_weights else None
    if not run.writes:
        return
    if hasattr(model, "peft_config"):
        model.save_pretrained(run.folder / "adapter")
    if save_base:
        if gathered is None:
            plain_model(model).save_pretrained(run.folder / "model")
        else:
            base.save_pretrained(run.folder / "model", state_dict=dict(base_entries(model, gathered.items())))
        tokenizer.save_pretrained(run.folder / "model")


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict:
    """The GPU memory allocated at the peak since reset_peak_memory (graph pools included); CUDA only."""
    return {"train_peak_gpu_bytes": torch.cuda.max_memory_allocated(device)} if device.type == "cuda" else {}


def plain_model(model):
    """θ alone: the base model without its adapters (LoRA layers removed, not merged into θ)."""
    if not hasattr(model, "peft_config"):
        return model
    if model.active_peft_config.is_prompt_learning:
        return model.get_base_model()
    return model.unload()


def open_run(config: RunConfig):
    """What is checked before any model loads (the device and graphs on it, the model source, the run
    folder), then the tokenizer and the run's model calls: (device, run, checkpoint state, tokenizer, calls).
    On several processes: the process group and this rank's device; rank 0 alone opens the run folder and
    hands the checkpoint (or its refusal) to the others."""
    device = resolve_device(config.device)
    config.uses_graphs(device)  # refuses --graphs on / --compile without CUDA before anything loads
    check_model(config.model)
    device = distributed.setup(device, config.collective_timeout, always=config.shard_weights)
    run = RunFolder(config.run_dir(), writes=distributed.is_main())
    # a field the run's method does not read may differ, or be missing from an older zofo's checkpoint (a LoRA run
    # begun before adapter.prefix_init existed)
    state = distributed.from_main(lambda: run.open(config.to_dict(), config.resume, config.overwrite, config.uses))
    tokenizer = load_tokenizer(config.model)
    return device, run, state, tokenizer, model_calls(config, device, tokenizer.pad_token_id)


def run_training(config: RunConfig) -> dict:
    distributed.check_launch(config)  # batch size, method and device for several processes, before anything loads
    if config.method in META_METHODS:
        return run_meta_training(config)
    device, run, state, tokenizer, calls = open_run(config)
    tasks = prepare_tasks(config, tokenizer, calls=calls)

    def start_point(model=None) -> Method:  # the base model and the seeded adapters, before any step
        if model is None:
            model = load_base_model(config, device)
        return METHODS[config.method](model, tasks, config, Trajectory(run.trajectory_path, writes=run.writes))

    model = load_base_model(config, device)
    metrics = {
        "task": config.data.task, "method": config.method, "peft": config.adapter.peft, "model": config.model,
        "seed": config.seed, "hard_prompt": config.data.hard_prompt, "loss": config.loss,
        "device": device_name(device), "dtype": config.dtype, "data": tasks.metadata,
        "processes": distributed.world_size(),
    }
    if state is not None:
        metrics.update(state["zero_shot"])
        distributed.print_main(f"resuming {run.folder} after step {state['step']}")
    elif config.zero_shot and config.test:
        start = time.perf_counter()
        metrics["zero_shot"] = tasks.test_metrics(model, tokenizer)  # the base model, no adapter
        metrics["zero_shot_seconds"] = round(time.perf_counter() - start, 2)
        distributed.print_main(f"zero-shot test {metrics['zero_shot']}")
    zero_shot = {k: metrics[k] for k in ("zero_shot", "zero_shot_seconds") if k in metrics}
    method = start_point(model)
    del model  # the method holds it; released with the method if the selected step is rebuilt

    reset_peak_memory(device)
    try:
        selection = loop.train(method, run, state, extra_state={"zero_shot": zero_shot})
    except Diverged as error:
        return finish_diverged(config, run, metrics, error)
    metrics.update(peak_memory(device))
    if selection.step != method.schedule()[-1]:  # back to the selected step, from the start point
        del method  # one model in memory at a time
        calls.clear()  # its graphs too
        method = start_point()
        method.restore(selection.step, selection.snapshot)
    metrics.update(selection.summary())
    metrics.update(method.summary())
    if not config.test:  # a tuning run: chosen by its validation loss, no test split read
        return finish_tuning_run(run, metrics, calls)
    start = time.perf_counter()
    other_tests = method.other_tests(lambda variant: tasks.test_metrics(variant, tokenizer))
    other_seconds = time.perf_counter() - start
    model = method.finish()
    start = time.perf_counter()
    metrics["test"] = tasks.test_metrics(model, tokenizer)
    metrics["test_seconds"] = round(time.perf_counter() - start, 2)
    if other_tests:
        metrics.update(other_tests, other_tests_seconds=round(other_seconds, 2))
        distributed.print_main("also tested at that step: " + ", ".join(f"{k} {v}" for k, v in other_tests.items()))
    metrics["graphs"] = calls.summary()  # captures and the seconds they took, the test's included
    distributed.print_main(f"test at best step {selection.step}: {metrics['test']}")

    metrics["model_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    save_results(model, tokenizer, config, run)
    run.finish(metrics)
    return metrics


def finish_tuning_run(run: RunFolder, metrics: dict, calls) -> dict:
    metrics["graphs"] = calls.summary()
    run.finish(metrics)
    return metrics


def finish_diverged(config: RunConfig, run: RunFolder, metrics: dict, error: Diverged) -> dict:
    """A tuning run whose loss diverged has a result: its values are never chosen. So has a run with
    on_divergence test-best that diverged before its first validation: no step to test, no test metric (one that
    diverged later is tested at its selected step: loop.train returns). Any other run fails."""
    if config.test and config.on_divergence != "test-best":
        raise error
    distributed.print_main(f"diverged: {error}" + ("; no validation before it, so no step to test" if config.test else ""))
    metrics.update(diverged=str(error), best_step=None, best_val_loss=None, **({"test": None} if config.test else {}))
    run.finish(metrics)
    return metrics


def scores_line(results: dict) -> str:
    return ", ".join(f"{mode.replace('_', '-')} {results[mode]:.4f}" for mode in MODES if mode in results)


def run_meta_training(config: RunConfig) -> dict:
    """Meta-train θ on a MetaICL setting's training tasks, select the step on their held-out examples, then
    meta-test θ on the setting's test tasks. Bilevel ZOFO (a pair of adapters per task) and the MeZO
    baseline are tested zero-shot and tuned with a fresh LoRA per task and seed; the MetaICL baseline by
    in-context prediction. The pretrained model is meta-tested first in all three ways: the zero-shot,
    in-context and tuned-pretrained baselines."""
    setting = metaicl.load_setting(config.meta.setting, config.data.data_dir)  # a wrong setting fails at once
    train_names, test_names = setting.train[: config.meta.train_tasks], setting.test[: config.meta.test_tasks]
    device, run, state, tokenizer, calls = open_run(config)
    tasks = TaskSet([metaicl_task_data(name, config, tokenizer, calls, config.meta.val_per_task,
                                       demonstrations=config.method == "meta-icl") for name in train_names])

    def start_point(model=None):
        if model is None:
            model = load_base_model(config, device)
        return METHODS[config.method](model, tasks, config, Trajectory(run.trajectory_path, writes=run.writes))

    def test(model, modes) -> dict:
        start = time.perf_counter()
        results = meta_test(model, tokenizer, list(test_names), config.data.data_dir, steps=config.meta.tune_steps,
                            lr=config.meta.tune_lr, limit=config.meta.test_cap, max_length=config.data.max_length,
                            calls=calls, loss=tasks[train_names[0]].loss_name, modes=modes,
                            demo_max_length=config.meta.demo_max_length)
        return {**results, "seconds": round(time.perf_counter() - start, 2)}

    model = load_base_model(config, device)
    metrics = {"method": config.method, "peft": config.adapter.peft, "model": config.model, "seed": config.seed,
               "device": device_name(device), "dtype": config.dtype, "data": setting.metadata(),
               "train_tasks": list(train_names), "test_tasks": list(test_names), "processes": distributed.world_size()}
    if state is not None:
        metrics.update(state["pretrained"])
        distributed.print_main(f"resuming {run.folder} after step {state['step']}")
    elif config.zero_shot and config.test:
        metrics["pretrained"] = test(model, MODES)  # the zero-shot, in-context and tuned-pretrained baselines
        distributed.print_main("pretrained model: " + scores_line(metrics["pretrained"]))
    pretrained = {k: metrics[k] for k in ("pretrained",) if k in metrics}
    method = start_point(model)
    del model

    reset_peak_memory(device)
    try:
        selection = loop.train(method, run, state, extra_state={"pretrained": pretrained})
    except Diverged as error:
        return finish_diverged(config, run, metrics, error)
    metrics.update(peak_memory(device))  # meta-training's own peak (the meta-tests tune their own LoRA)
    if selection.step != method.schedule()[-1]:  # back to the selected step, from the start point
        del method
        calls.clear()
        method = start_point()
        method.restore(selection.step, selection.snapshot)
    metrics.update(selection.summary())
    metrics.update(method.summary())
    if not config.test:  # a tuning run: chosen by its validation loss, no test split read
        return finish_tuning_run(run, metrics, calls)
    theta = plain_model(method.finish())
    # MetaICL predicts in context; the others zero-shot and tuned
    modes = ("zero_shot", "icl") if config.method == "meta-icl" else ("zero_shot", "tuned")
    metrics["meta_test"] = test(theta, modes)
    metrics["test"] = {k: v for k, v in metrics["meta_test"].items() if k.split("_std")[0] in MODES}
    distributed.print_main(f"meta-trained θ at step {selection.step}: " + scores_line(metrics["meta_test"]))
    metrics["graphs"] = calls.summary()
    if config.save_model and run.writes:
        theta.save_pretrained(run.folder / "model")
        tokenizer.save_pretrained(run.folder / "model")
    run.finish(metrics)
    return metrics
