"""From examples to tensors: tokenized options, left-padded batches, minibatch sampling.

An example has one (context, continuation) option per candidate answer. Rows are left-padded, so
every continuation ends at the last position of its row and scoring needs only the logits of the
last `continuation_length + 1` positions (`logits_to_keep`), not the whole vocabulary at every token.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from .tasks import Example


@dataclass(frozen=True)
class TokenizedExample:
    options: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]  # (context ids, continuation ids) per option
    label: int
    answers: tuple[str, ...] = ()

    @property
    def length(self) -> int:
        return max(len(context) + len(continuation) for context, continuation in self.options)


def tokenize_examples(examples: list[Example], tokenizer, max_length: int) -> list[TokenizedExample]:
    """Tokenize context and continuation separately (the continuation mask is then exact).

    Contexts that do not fit `max_length` lose tokens from the left, as in MeZO; the continuation is kept whole.
    """
    contexts = sorted({context for example in examples for context, _ in example.options})
    continuations = sorted({continuation for example in examples for _, continuation in example.options})
    context_ids = dict(zip(contexts, tokenizer(contexts)["input_ids"])) if contexts else {}
    continuation_ids = (
        dict(zip(continuations, tokenizer(continuations, add_special_tokens=False)["input_ids"]))
        if continuations else {}
    )
    tokenized = []
    for example in examples:
        options = []
        for context, continuation in example.options:
            answer = tuple(continuation_ids[continuation])[: max_length - 1]
            if not answer:
                raise ValueError(f"continuation {continuation!r} tokenizes to nothing; a candidate needs a token")
            prompt = tuple(context_ids[context])[-(max_length - len(answer)):]
            options.append((prompt, answer))
        tokenized.append(TokenizedExample(tuple(options), example.label, example.answers))
    return tokenized


@dataclass
class OptionBatch:
    """Rows of (context + continuation), left-padded; rows of one example are consecutive."""

    input_ids: torch.Tensor  # [rows, length]
    attention_mask: torch.Tensor  # [rows, length]
    continuation_mask: torch.Tensor  # [rows, tail]: which of the last `tail` tokens are continuation tokens
    options_per_example: list[int]
    labels: torch.Tensor  # [examples]: index of the gold option within its example
    adapter_names: list[str] | None = None  # per row: peft's mixed-adapter batches (LoRA)

    def with_adapters(self, names_per_example: list[str]) -> "OptionBatch":
        """The same batch with each example's rows routed through the named peft adapter."""
        rows = [name for name, n in zip(names_per_example, self.options_per_example) for _ in range(n)]
        return OptionBatch(self.input_ids, self.attention_mask, self.continuation_mask,
                           self.options_per_example, self.labels, rows)

    @property
    def tail(self) -> int:
        return self.continuation_mask.shape[1]

    def to(self, device) -> "OptionBatch":
        return OptionBatch(
            self.input_ids.to(device), self.attention_mask.to(device), self.continuation_mask.to(device),
            self.options_per_example, self.labels.to(device), self.adapter_names,
        )


def option_batch(examples: list[TokenizedExample], pad_id: int, gold_only: bool = False) -> OptionBatch:
    """All options of `examples` (or only the gold option of each) as one left-padded batch."""
    rows, per_example, labels = [], [], []
    for example in examples:
        options = [example.options[example.label]] if gold_only else list(example.options)
        rows.extend(options)
        per_example.append(len(options))
        labels.append(0 if gold_only else example.label)
    length = max(len(context) + len(continuation) for context, continuation in rows)
    tail = max(len(continuation) for _, continuation in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    continuation_mask = torch.zeros((len(rows), tail), dtype=torch.bool)
    for row, (context, continuation) in enumerate(rows):
        tokens = context + continuation
        input_ids[row, length - len(tokens):] = torch.tensor(tokens)
        attention_mask[row, length - len(tokens):] = 1
        continuation_mask[row, tail - len(continuation):] = True
    return OptionBatch(input_ids, attention_mask, continuation_mask, per_example, torch.tensor(labels))


def context_batch(examples: list[TokenizedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded contexts of the first option, for generation."""
    contexts = [example.options[0][0] for example in examples]
    length = max(len(context) for context in contexts)
    input_ids = torch.full((len(contexts), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(contexts), length), dtype=torch.long)
    for row, context in enumerate(contexts):
        input_ids[row, length - len(context):] = torch.tensor(context)
        attention_mask[row, length - len(context):] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def chunks_by_rows(examples: list[TokenizedExample], max_rows: int) -> list[list[int]]:
    """Group example indices (sorted by length, so padding stays small) into chunks of at most
    `max_rows` option rows; an example with more options than that gets a chunk of its own."""
    order = sorted(range(len(examples)), key=lambda i: examples[i].length)
    chunks, current, rows = [], [], 0
    for i in order:
        n = len(examples[i].options)
        if current and rows + n > max_rows:
            chunks.append(current)
            current, rows = [], 0
        current.append(i)
        rows += n
    if current:
        chunks.append(current)
    return chunks


class MinibatchSampler:
    """Minibatches drawn without replacement, reshuffled each epoch, from a seeded generator.

    Its position is two integers (epoch and offset), so a resumed run draws the same batches.
    """

    def __init__(self, size: int, batch_size: int, seed: int):
        if size == 0:
            raise ValueError("cannot sample minibatches from an empty training set")
        self.size, self.batch_size, self.seed = size, min(batch_size, size), seed
        self.epoch, self.offset = 0, 0
        self._order = self._shuffled(0)

    def _shuffled(self, epoch: int) -> list[int]:
        order = list(range(self.size))
        random.Random(f"{self.seed}-{epoch}").shuffle(order)
        return order

    def next(self) -> list[int]:
        if self.offset + self.batch_size > self.size:
            self.epoch, self.offset = self.epoch + 1, 0
            self._order = self._shuffled(self.epoch)
        batch = self._order[self.offset : self.offset + self.batch_size]
        self.offset += self.batch_size
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.offset = state["epoch"], state["offset"]
        self._order = self._shuffled(self.epoch)
