"""The meta-test protocol of the paper's section 4.2, on MetaICL's test tasks (issue 12, point 3).

    for each test task, on its test set (optionally capped):
        zero-shot   θ alone: no adapter, no demonstrations
        for each demonstration seed s (100, 13, 21, 42, 87):
            tuned   θ frozen; a fresh LoRA trained for `steps` full-batch Adam steps on 4 examples per class
                    of seed s's 16-shot train file (QA: 4 examples), on the LM loss of the gold answers
                    (MetaICL's objective; `loss`), then predict without demonstrations
    score: macro-F1 for classification tasks, accuracy for QA (MetaICL's); per task the mean over seeds, per
    setting the mean over tasks, with the std over seeds of the setting's mean.
"""

from __future__ import annotations

import statistics

import torch

from .adapters import adapter_parameters, adapter_state, load_adapter_state, with_adapters
from .batches import tokenize_examples
from .calls import ModelCalls
from .config import AdapterConfig
from .data import TaskData
from .tasks import metaicl

TUNED = "tuned"  # the name of the test-time adapter


def score(metrics: dict) -> float:
    """The number MetaICL reports: macro-F1 where the task has it, else accuracy."""
    return metrics.get("macro_f1", metrics["accuracy"])


def meta_test(model, tokenizer, tasks: list[str], data_dir=None, seeds=metaicl.SEEDS, steps: int = 10,
              lr: float = 1e-3, per_class: int = 4, limit: int | None = None, max_length: int = 256,
              calls: ModelCalls | None = None, adapter: AdapterConfig = AdapterConfig(peft="lora"),
              loss: str = "lm") -> dict:
    """Zero-shot and tuned scores of `model` (θ; unchanged when this returns) on each test task; see the
    module's docstring. `limit` caps each test set (a random sample; say so with the numbers)."""
    calls = calls or ModelCalls(pad_id=tokenizer.pad_token_id)
    results = {"tasks": {}, "seeds": list(seeds), "steps": steps, "lr": lr, "per_class": per_class, "test_cap": limit,
               "loss": loss}

    def task_data(name: str, records: list[dict], test: list[dict]) -> TaskData:
        tokenized = lambda rows: tokenize_examples([metaicl.example(r) for r in rows], tokenizer, max_length)
        return TaskData(task=metaicl.task_of(name, test), train=tokenized(records), validation=[], test=tokenized(test),
                        metadata={}, loss_name=loss, pad_id=tokenizer.pad_token_id, calls=calls)

    tuned = with_adapters(model, adapter, [TUNED], seed=0)  # θ frozen; the adapter re-initialised per task and seed
    fresh = adapter_state(tuned, TUNED)
    for name in tasks:
        test = metaicl.test_records(name, data_dir, limit)
        with tuned.disable_adapter():
            zero_shot = score(task_data(name, [], test).test_metrics(tuned, tokenizer))
        per_seed = {}
        for seed in seeds:
            data = task_data(name, metaicl.demonstrations(name, seed, data_dir, per_class), test)
            load_adapter_state(tuned, TUNED, fresh)
            optimizer = torch.optim.Adam(adapter_parameters(tuned, TUNED), lr=lr)
            for _ in range(steps):  # full batch: every demonstration in each step
                data.backward(tuned, data.train)
                optimizer.step()
                optimizer.zero_grad(set_to_none=False)
            per_seed[seed] = score(data.test_metrics(tuned, tokenizer))
        results["tasks"][name] = {"zero_shot": zero_shot, "tuned": statistics.mean(per_seed.values()),
                                  "tuned_by_seed": per_seed, "metric": metaicl.task_of(name, test).metric,
                                  "test_examples": len(test)}
    by_seed = [statistics.mean(t["tuned_by_seed"][s] for t in results["tasks"].values()) for s in seeds]
    results["zero_shot"] = statistics.mean(t["zero_shot"] for t in results["tasks"].values())
    results["tuned"] = statistics.mean(by_seed)
    results["tuned_std_over_seeds"] = statistics.stdev(by_seed) if len(by_seed) > 1 else 0.0
    tuned.unload()  # the LoRA layers out again: `model` is as it came
    return results
