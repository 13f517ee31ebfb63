"""From examples to tensors: tokenized options, left-padded batches, minibatch sampling.

An example has one (context, continuation) option per candidate answer. Rows are left-padded, so
every continuation ends at the last position of its row and scoring needs only the logits of the
last `continuation_length + 1` positions (`logits_to_keep`), not the whole vocabulary at every token.
Options of one token after a shared context (SST-2's " great" / " terrible") share one row: the
logits at its last position score them all, so such tasks cost one row per example, not one per option.
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

    @property
    def shared(self) -> bool:
        """Every option is one token after one common context (most classification verbalizers): one
        forward of the context scores them all, from the logits at its last position."""
        context = self.options[0][0]
        return all(len(continuation) == 1 and c == context for c, continuation in self.options)

    @property
    def rows(self) -> int:
        return 1 if self.shared else len(self.options)


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
    """Left-padded rows and, for every option, the tokens it predicts at the rows' last positions.

    The model's logits are kept for the last `tail + 1` positions of every row. Option o is scored from
    row option_rows[o]: at kept position j it predicts targets[o, j] where target_mask[o, j]. An option
    with its own row (context + continuation) predicts its continuation from the positions before it;
    options sharing a context row predict their one token from the row's last position."""

    input_ids: torch.Tensor  # [rows, length]
    attention_mask: torch.Tensor  # [rows, length]
    option_rows: torch.Tensor  # [options]
    targets: torch.Tensor  # [options, tail + 1]
    target_mask: torch.Tensor  # [options, tail + 1]
    options_per_example: list[int]
    labels: torch.Tensor  # [examples]: index of the gold option within its example

    @property
    def kept(self) -> int:
        """Positions whose logits the scores need (`logits_to_keep`)."""
        return self.targets.shape[1]

    def to(self, device) -> "OptionBatch":
        tensors = {name: getattr(self, name).to(device) for name in
                   ("input_ids", "attention_mask", "option_rows", "targets", "target_mask", "labels")}
        return OptionBatch(**tensors, options_per_example=self.options_per_example)


def option_batch(examples: list[TokenizedExample], pad_id: int, gold_only: bool = False) -> OptionBatch:
    """All options of `examples` (or only the gold option of each) as one left-padded batch."""
    rows, scored, per_example, labels = [], [], [], []  # scored: (row, continuation, shares the row)
    for example in examples:
        options = [example.options[example.label]] if gold_only else list(example.options)
        if example.shared:
            rows.append(options[0][0])
            scored += [(len(rows) - 1, continuation, True) for _, continuation in options]
        else:
            for context, continuation in options:
                rows.append(context + continuation)
                scored.append((len(rows) - 1, continuation, False))
        per_example.append(len(options))
        labels.append(0 if gold_only else example.label)
    length = max(len(row) for row in rows)
    tail = max([len(c) for _, c, shares in scored if not shares], default=0)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for r, tokens in enumerate(rows):
        input_ids[r, length - len(tokens):] = torch.tensor(tokens)
        attention_mask[r, length - len(tokens):] = 1
    targets = torch.zeros((len(scored), tail + 1), dtype=torch.long)
    target_mask = torch.zeros((len(scored), tail + 1), dtype=torch.bool)
    for o, (_, continuation, shares) in enumerate(scored):
        if shares:  # predicted from the row's last position
            targets[o, tail] = continuation[0]
            target_mask[o, tail] = True
        else:  # its tokens end the row: predicted from the positions just before them
            targets[o, tail - len(continuation) : tail] = torch.tensor(continuation)
            target_mask[o, tail - len(continuation) : tail] = True
    option_rows = torch.tensor([r for r, _, _ in scored], dtype=torch.long)
    return OptionBatch(input_ids, attention_mask, option_rows, targets, target_mask, per_example, torch.tensor(labels))


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
    `max_rows` rows; an example with more rows than that gets a chunk of its own."""
    order = sorted(range(len(examples)), key=lambda i: examples[i].length)
    chunks, current, rows = [], [], 0
    for i in order:
        n = examples[i].rows
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
