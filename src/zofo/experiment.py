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


def run_training(config: TrainConfig) -> dict:
    train = get_method(config.method)
    if config.resume and config.method == "fo":
        raise ValueError("--resume is for zeroth-order runs (their trajectory rebuilds the weights); rerun fo from the start")
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

    if hasattr(model, "peft_config"):
        model.save_pretrained(run.folder / "adapter")
    elif config.save_model:  # the base weights themselves were trained
        model.save_pretrained(run.folder / "model")
        tokenizer.save_pretrained(run.folder / "model")
    metrics["model_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    run.write_metrics(metrics)
    run.plot_losses()
    return metrics
