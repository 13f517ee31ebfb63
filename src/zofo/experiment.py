"""One training run from a config: load, evaluate zero-shot, train, select, test, write the run folder."""

from __future__ import annotations

import platform
import time

import torch

from .config import TrainConfig
from .methods import get_method
from .models import load_model
from .runs import Run
from .training import prepare_data


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def trains_base_model(config: TrainConfig) -> bool:
    return config.method in ("bilevel", "two-stage") or (config.method == "mezo" and config.peft == "none")


def save_results(model, tokenizer, config: TrainConfig, run: Run) -> None:
    """The adapter with peft's save_pretrained; the base weights, where the method trained them, as a
    plain transformers folder (the adapter is taken off first, so `from_pretrained` loads θ alone)."""
    if hasattr(model, "peft_config"):
        model.save_pretrained(run.folder / "adapter")
    if trains_base_model(config) and config.save_model:
        if not hasattr(model, "peft_config"):
            base = model
        elif model.active_peft_config.is_prompt_learning:
            base = model.get_base_model()
        else:
            base = model.unload()  # removes the LoRA layers without merging them into θ
        base.save_pretrained(run.folder / "model")
        tokenizer.save_pretrained(run.folder / "model")


def run_training(config: TrainConfig) -> dict:
    train = get_method(config.method)
    if config.resume and config.method != "mezo":
        raise ValueError("--resume is implemented for mezo runs (their trajectory rebuilds the weights); rerun from the start")
    torch.manual_seed(config.seed)
    model, tokenizer = load_model(config.model, config.dtype, config.device, seed=config.seed)
    data = prepare_data(config, tokenizer)
    run = Run.resume(config.run_dir(), config.to_dict()) if config.resume else Run(config.run_dir(), config.to_dict())
    metrics = {
        "task": config.task, "method": config.method, "peft": config.peft, "model": config.model,
        "seed": config.seed, "hard_prompt": config.hard_prompt, "loss": data.loss_name,
        "device": device_name(model.device), "dtype": config.dtype, "data": data.metadata,
    }
    if config.zero_shot:
        start = time.perf_counter()
        metrics["zero_shot"] = data.test_metrics(model, tokenizer)
        metrics["zero_shot_seconds"] = round(time.perf_counter() - start, 2)
        print(f"zero-shot test {metrics['zero_shot']}", flush=True)

    torch.manual_seed(config.seed)  # adapter initialisation does not depend on whether zero-shot ran
    start = time.perf_counter()
    model, selection = train(model, data, config, run)
    metrics["train_seconds"] = round(time.perf_counter() - start, 2)
    metrics.update(selection)
    metrics["test"] = data.test_metrics(model, tokenizer)
    print(f"test at best step {selection['best_step']}: {metrics['test']}", flush=True)

    metrics["model_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    save_results(model, tokenizer, config, run)
    run.write_metrics(metrics)
    run.plot_losses()
    return metrics
