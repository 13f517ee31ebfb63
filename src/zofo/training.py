"""Machinery every method shares: the prepared task data, checkpoint selection, loss checks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .batches import MinibatchSampler, OptionBatch, TokenizedExample, option_batch, tokenize_examples
from .config import TrainConfig
from .evaluation import evaluate, mean_loss
from .losses import loss_function
from .tasks import Task, get_task, load_splits


@dataclass
class TaskData:
    """One task's sampled splits, tokenized, with the loss the run trains on."""

    task: Task
    train: list[TokenizedExample]
    validation: list[TokenizedExample]
    test: list[TokenizedExample]
    metadata: dict
    loss_name: str
    pad_id: int
    eval_batch_size: int = 32
    max_new_tokens: int = 50

    @property
    def gold_only(self) -> bool:
        return self.loss_name == "lm"

    def loss_fn(self):
        return loss_function(self.loss_name)

    def batch(self, examples: list[TokenizedExample], device) -> OptionBatch:
        return option_batch(examples, self.pad_id, gold_only=self.gold_only).to(device)

    def train_batch(self, indices: list[int], device) -> OptionBatch:
        return self.batch([self.train[i] for i in indices], device)

    def sampler(self, batch_size: int, seed: int, size: int | None = None) -> MinibatchSampler:
        """Minibatches of indices into the training set (or into a subset of `size` examples)."""
        return MinibatchSampler(len(self.train) if size is None else size, batch_size, seed)

    def validation_loss(self, model) -> float:
        return mean_loss(model, self.loss_fn(), self.validation, self.pad_id, self.gold_only, self.eval_batch_size)

    def test_metrics(self, model, tokenizer) -> dict[str, float]:
        return evaluate(model, tokenizer, self.task, self.test, self.eval_batch_size, self.max_new_tokens)


def prepare_data(config: TrainConfig, tokenizer) -> TaskData:
    task = get_task(config.task)
    splits = load_splits(task, config.data_dir, config.seed, config.n_train, config.n_val, config.n_test)

    def tokenized(records: list[dict]) -> list[TokenizedExample]:
        examples = [task.example(record, hard_prompt=config.hard_prompt) for record in records]
        return tokenize_examples(examples, tokenizer, config.max_length)

    return TaskData(
        task=task, train=tokenized(splits.train), validation=tokenized(splits.validation),
        test=tokenized(splits.test), metadata=splits.metadata, loss_name=config.resolved_loss(task.generative),
        pad_id=tokenizer.pad_token_id, eval_batch_size=config.eval_batch_size, max_new_tokens=config.max_new_tokens,
    )


class NonFiniteLoss(RuntimeError):
    pass


def check_finite(loss: float, step: int, seed: int | None = None) -> None:
    if not math.isfinite(loss):
        where = f"step {step}" + (f" (perturbation seed {seed})" if seed is not None else "")
        raise NonFiniteLoss(f"loss became {loss} at {where}; lower the learning rate or use fp32")


class BestCheckpoint:
    """Keeps the state with the lowest validation loss seen so far (a copy, on the parameters' device)."""

    def __init__(self):
        self.step: int | None = None
        self.val_loss = math.inf
        self.state: dict[str, torch.Tensor] | None = None

    def update(self, step: int, val_loss: float, state: dict[str, torch.Tensor]) -> bool:
        if val_loss < self.val_loss:
            self.step, self.val_loss = step, val_loss
            self.state = {name: tensor.detach().clone() for name, tensor in state.items()}
            return True
        return False

    def summary(self) -> dict:
        return {"best_step": self.step, "best_val_loss": self.val_loss}
