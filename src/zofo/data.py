"""Task data as methods use it: each task's sampled splits, tokenized, with its loss and samplers;
a TaskSet holds one task or many (multi-task methods train one adapter pair per task).

Data flows one way: files -> records (tasks/) -> examples -> tokenized examples -> batches (batches.py).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch

from . import distributed
from .batches import GroupedBatch, MinibatchSampler, OptionBatch, TokenizedExample, grouped_batch, tokenize_examples
from .calls import ModelCalls
from .config import RunConfig
from .errors import ConfigError
from .evaluation import evaluate, mean_loss
from .tasks import Task, get_task, load_splits, metaicl


class ExampleSampler:
    """Minibatches of examples drawn without replacement from a pool (reshuffled each epoch, seeded);
    its position is its state, so a resumed run draws the same batches. On several processes every rank
    draws the same minibatch and keeps its own shard of it (distributed.shard)."""

    def __init__(self, examples: list[TokenizedExample], batch_size: int, seed: int):
        self.examples = examples
        self.indices = MinibatchSampler(len(examples), batch_size, seed)
        if self.indices.batch_size % distributed.world_size():
            raise ConfigError(f"a pool of {len(examples)} training examples gives minibatches of "
                              f"{self.indices.batch_size}, which do not split over {distributed.world_size()} "
                              "processes: raise --n-train, or use a batch size the pool can fill")

    def next(self) -> list[TokenizedExample]:
        """This rank's shard of the next minibatch (the whole minibatch on one process)."""
        return [self.examples[i] for i in distributed.shard(self.indices.next())]

    def state_dict(self) -> dict:
        return self.indices.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.indices.load_state_dict(state)


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
    calls: ModelCalls = field(default_factory=ModelCalls)  # eager, or CUDA graphs (calls.py)
    length_groups: int = 1  # a training batch's groups of examples of similar length (RunConfig.length_groups)

    @property
    def name(self) -> str:
        return self.task.name

    def batch(self, examples: list[TokenizedExample]) -> OptionBatch | GroupedBatch:
        """The training loss's batch of `examples`, on the host (the model call moves it)."""
        return grouped_batch(examples, self.pad_id, self.loss_name == "lm", self.length_groups)

    def loss(self, model, examples: list[TokenizedExample]) -> torch.Tensor:
        """The training loss of `examples` (a tensor on the model's device), no gradient."""
        return self.batch_loss(model, self.batch(examples))

    def batch_loss(self, model, batch: OptionBatch | GroupedBatch) -> torch.Tensor:
        """The training loss of a batch built once and evaluated several times (at θ + εu and θ − εu)."""
        return self.calls.loss(model, batch, self.loss_name)

    def loss_weight(self, examples: list[TokenizedExample]) -> float:
        """The denominator of the training loss's mean over `examples`: their number ("candidates"), or their
        gold answers' tokens ("lm"). A data-parallel run weights each rank's mean by it."""
        if self.loss_name == "lm":
            return float(sum(len(example.options[example.label][1]) for example in examples))
        return float(len(examples))

    def backward(self, model, examples: list[TokenizedExample], scale: float = 1.0) -> torch.Tensor:
        """The training loss of `examples`, its gradient (times scale) added to the trainable .grad."""
        return self.calls.backward(model, self.batch(examples), self.loss_name, scale)

    def gradient(self, model, examples: list[TokenizedExample], optimizer, scale: float = 1.0) -> torch.Tensor:
        """backward() for a step of `optimizer`: on several processes, where `examples` is this rank's shard,
        the gradient of its parameters and the loss are then averaged over the ranks weighted by loss_weight,
        which makes them the whole minibatch's. Where gradients of several minibatches accumulate, each call
        averages its own (what was averaged before is the same on every rank, and stays as it is)."""
        loss = self.backward(model, examples, scale)
        return distributed.average_gradients(optimizer, loss, weight=self.loss_weight(examples))

    def sampler(self, batch_size: int, seed: int, examples: list[TokenizedExample] | None = None) -> ExampleSampler:
        """Minibatches of the training examples (or of a subset of them)."""
        return ExampleSampler(self.train if examples is None else examples, batch_size, seed)

    def split(self, seed: int, first: int = 1, parts: int = 3) -> tuple[list[TokenizedExample], list[TokenizedExample]]:
        """The training examples shuffled with the seed and cut in two disjoint parts, the first holding
        first/parts of them (Bilevel ZOFO's D_FT : D_PEFT = 1 : 2)."""
        order = list(range(len(self.train)))
        random.Random(f"bilevel-split-{seed}").shuffle(order)
        cut = len(order) * first // parts
        return [self.train[i] for i in order[:cut]], [self.train[i] for i in order[cut:]]

    @property
    def uniform_guess_loss(self) -> float | None:
        """The validation loss of a model that scores every candidate alike (mean of ln of their number); None for
        the lm loss, which has no such guess."""
        if self.loss_name == "lm":
            return None
        return sum(math.log(len(example.options)) for example in self.validation) / len(self.validation)

    def validation_loss(self, model) -> float:
        """On several processes each rank scores its shard of the examples; the sums are all-reduced."""
        return mean_loss(model, self.loss_name, distributed.evaluation_shard(self.validation), self.pad_id,
                         self.eval_batch_size, self.calls, reduce=distributed.evaluation_sums)

    def test_metrics(self, model, tokenizer, examples: list[TokenizedExample] | None = None) -> dict[str, float]:
        return evaluate(model, tokenizer, self.task, self.test if examples is None else examples,
                        self.eval_batch_size, self.max_new_tokens, self.calls)


class TaskSet:
    """The tasks of a run, by name: one for single-task methods, many for multi-task ones."""

    def __init__(self, tasks: list[TaskData]):
        if not tasks:
            raise ValueError("a task set needs at least one task")
        self.tasks = {data.name: data for data in tasks}

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self):
        return iter(self.tasks.values())

    def __getitem__(self, name: str) -> TaskData:
        return self.tasks[name]

    @property
    def single(self) -> TaskData:
        """The one task of a single-task run."""
        if len(self.tasks) != 1:
            raise ValueError(f"this method trains on one task, got {len(self.tasks)}: {', '.join(self.tasks)}")
        return next(iter(self.tasks.values()))

    def validation_loss(self, model) -> float:
        """The mean of the tasks' validation losses (what selects the checkpoint)."""
        return sum(data.validation_loss(model) for data in self) / len(self)

    @property
    def uniform_guess_loss(self) -> float | None:
        """validation_loss's value for a model that scores every candidate alike."""
        guesses = [data.uniform_guess_loss for data in self]
        return None if None in guesses else sum(guesses) / len(guesses)

    def test_metrics(self, model, tokenizer) -> dict:
        """A single task's metrics, or {task: metrics} for several."""
        if len(self.tasks) == 1:
            return self.single.test_metrics(model, tokenizer)
        return {data.name: data.test_metrics(model, tokenizer) for data in self}

    @property
    def metadata(self) -> dict:
        return self.single.metadata if len(self.tasks) == 1 else {data.name: data.metadata for data in self}


def prepare_task(config: RunConfig, tokenizer, task_name: str | None = None,
                 calls: ModelCalls | None = None) -> TaskData:
    data = config.data
    task = get_task(task_name or data.task)
    splits = load_splits(task, data.data_dir, config.seed, data.n_train, data.n_val, data.n_test)

    def tokenized(records: list[dict]) -> list[TokenizedExample]:
        examples = [task.example(record, hard_prompt=data.hard_prompt) for record in records]
        return tokenize_examples(examples, tokenizer, data.max_length)

    return TaskData(
        task=task, train=tokenized(splits.train), validation=tokenized(splits.validation),
        test=tokenized(splits.test), metadata=splits.metadata, loss_name=config.loss_for(task),
        pad_id=tokenizer.pad_token_id, eval_batch_size=config.eval_batch_size, max_new_tokens=config.max_new_tokens,
        calls=calls or ModelCalls(pad_id=tokenizer.pad_token_id), length_groups=config.length_groups,
    )


PER_CLASS = 4  # demonstrations per class (QA: in all), as in the meta-test


def metaicl_task_data(name: str, config: RunConfig, tokenizer, calls: ModelCalls | None = None,
                      validation: int = 16, demonstrations: bool = False) -> TaskData:
    """A MetaICL meta-training task: its pool (the union of its 16-shot files) shuffled with the seed, the
    first `validation` examples held out to select on (the test tasks are never looked at). Its loss is
    MetaICL's own, the LM loss of the gold answer, unless --loss candidates: a task such as `discovery`
    has 174 options, so the candidates loss would forward (and back-propagate) 174 rows per example.
    With `demonstrations` (MetaICL's training), every input has 4 examples per class of its own task before
    it, drawn from the other training examples (held-out ones are shown training examples only)."""
    records = metaicl.training_pool(name, config.data.data_dir)
    random.Random(f"metaicl-{name}-{config.seed}").shuffle(records)
    max_length = config.data.max_length
    if demonstrations:
        held_out, train = records[:validation], records[validation:]
        shown = metaicl.with_own_demonstrations(train, PER_CLASS, f"{name}-{config.seed}")
        # a held-out example is shown demonstrations from the training examples, never other held-out ones
        pool = random.Random(f"metaicl-held-out-{name}-{config.seed}")
        held_out = [metaicl.with_demonstrations(r, metaicl.pick_per_class(pool.sample(train, len(train)), PER_CLASS))
                    for r in held_out]
        records, max_length = held_out + shown, config.meta.demo_max_length
    examples = tokenize_examples([metaicl.example(r) for r in records], tokenizer, max_length)
    loss = "candidates" if config.data.loss == "candidates" else "lm"
    return TaskData(task=metaicl.task_of(name, records), train=examples[validation:], validation=examples[:validation],
                    test=[], metadata={"pool": len(records), "validation": validation}, loss_name=loss,
                    pad_id=tokenizer.pad_token_id, eval_batch_size=config.eval_batch_size,
                    calls=calls or ModelCalls(pad_id=tokenizer.pad_token_id), length_groups=config.length_groups)


def prepare_tasks(config: RunConfig, tokenizer, names: list[str] | None = None,
                  calls: ModelCalls | None = None) -> TaskSet:
    """The run's task (or the named tasks), sampled with the run's seed and tokenized; every model call
    goes through `calls` (one object for the run, so that the tasks' graphs share one memory pool)."""
    calls = calls or ModelCalls(pad_id=tokenizer.pad_token_id)
    return TaskSet([prepare_task(config, tokenizer, name, calls) for name in (names or [config.data.task])])
