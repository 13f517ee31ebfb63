"""The meta-test protocol of the paper's section 4.2, on MetaICL's test tasks (issue 12, point 3).

    for each test task, on its test set (optionally capped):
        zero-shot   θ alone: no adapter, no demonstrations
        for each demonstration seed s (100, 13, 21, 42, 87):
            tuned   θ frozen; a fresh LoRA trained for `steps` full-batch Adam steps on 4 examples per class
                    of seed s's 16-shot train file (QA: 4 examples), on the LM loss of the gold answers
                    (MetaICL's objective; `loss`), then predict without demonstrations
            icl     θ alone, the same 4 examples per class as demonstrations before every test input
                    (in-context learning; MetaICL's format, prompts cut from the left to `demo_max_length`)
    Which of the three run is `modes`.
    score: macro-F1 for classification tasks, accuracy for QA (MetaICL's); per task the mean over seeds, per
    setting the mean over tasks, with the std over seeds of the setting's mean.
"""

from __future__ import annotations

import statistics

import torch

from .adapters import adapter_parameters, adapter_state, load_adapter_state, with_adapters
from .batches import tokenize_examples
from .calls import ModelCalls, step_optimizer
from .config import AdapterConfig
from .data import TaskData
from .tasks import metaicl

TUNED = "tuned"  # the name of the test-time adapter
MODES = ("zero_shot", "tuned", "icl")


def score(metrics: dict) -> float:
    """The number MetaICL reports: macro-F1 where the task has it, else accuracy."""
    return metrics.get("macro_f1", metrics["accuracy"])


def meta_test(model, tokenizer, tasks: list[str], data_dir=None, seeds=metaicl.SEEDS, steps: int = 10,
              lr: float = 1e-3, per_class: int = 4, limit: int | None = None, max_length: int = 256,
              calls: ModelCalls | None = None, adapter: AdapterConfig = AdapterConfig(peft="lora"),
              loss: str = "lm", modes=("zero_shot", "tuned"), demo_max_length: int = 1024) -> dict:
    """Scores of `model` (θ; unchanged when this returns) on each test task in each of `modes`; see the
    module's docstring. `limit` caps each test set (a random sample; say so with the numbers)."""
    if not set(modes) <= set(MODES):
        raise ValueError(f"meta-test modes are {MODES}, got {modes}")
    calls = calls or ModelCalls(pad_id=tokenizer.pad_token_id)
    with_seeds = [mode for mode in modes if mode != "zero_shot"]  # tuned and icl: one score per seed
    results = {"tasks": {}, "modes": list(modes), "seeds": list(seeds), "steps": steps, "lr": lr,
               "per_class": per_class, "test_cap": limit, "loss": loss, "demo_max_length": demo_max_length}

    def task_data(name: str, records: list[dict], test: list[dict], length: int = max_length) -> TaskData:
        tokenized = lambda rows: tokenize_examples([metaicl.example(r) for r in rows], tokenizer, length)
        return TaskData(task=metaicl.task_of(name, test), train=tokenized(records), validation=[], test=tokenized(test),
                        metadata={}, loss_name=loss, pad_id=tokenizer.pad_token_id, calls=calls)

    tuned = with_adapters(model, adapter, [TUNED], seed=0)  # θ frozen; the adapter re-initialised per task and seed
    fresh = adapter_state(tuned, TUNED)
    for name in tasks:
        test = metaicl.test_records(name, data_dir, limit)
        task = results["tasks"][name] = {"metric": metaicl.task_of(name, test).metric, "test_examples": len(test)}
        if "zero_shot" in modes:
            with tuned.disable_adapter():
                task["zero_shot"] = score(task_data(name, [], test).test_metrics(tuned, tokenizer))
        for mode in with_seeds:
            task[f"{mode}_by_seed"] = {}
        for seed in seeds:
            shown = metaicl.demonstrations(name, seed, data_dir, per_class)
            if "tuned" in modes:
                data = task_data(name, shown, test)
                load_adapter_state(tuned, TUNED, fresh)
                optimizer = torch.optim.Adam(adapter_parameters(tuned, TUNED), lr=lr)
                for _ in range(steps):  # full batch: every demonstration in each step
                    data.backward(tuned, data.train)
                    step_optimizer(optimizer)
                task["tuned_by_seed"][seed] = score(data.test_metrics(tuned, tokenizer))
            if "icl" in modes:
                prompts = [metaicl.with_demonstrations(record, shown) for record in test]
                with tuned.disable_adapter():
                    task["icl_by_seed"][seed] = score(task_data(name, [], prompts, demo_max_length).test_metrics(tuned, tokenizer))
        for mode in with_seeds:
            task[mode] = statistics.mean(task[f"{mode}_by_seed"].values())
    tasks_results = results["tasks"].values()
    if "zero_shot" in modes:
        results["zero_shot"] = statistics.mean(t["zero_shot"] for t in tasks_results)
    for mode in with_seeds:  # the setting's mean per seed; its mean and std over seeds
        by_seed = [statistics.mean(t[f"{mode}_by_seed"][s] for t in tasks_results) for s in seeds]
        results[mode] = statistics.mean(by_seed)
        results[f"{mode}_std_over_seeds"] = statistics.stdev(by_seed) if len(by_seed) > 1 else 0.0
    tuned.unload()  # the LoRA layers out again: `model` is as it came
    return results
