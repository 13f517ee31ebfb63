"""From examples to tensors: tokenized options, left-padded batches, minibatch sampling.

An example has one (context, continuation) option per candidate answer. Rows are left-padded, so
every continuation ends at the last position of its row and scoring needs only the logits of the
last `continuation_length + 1` positions (`logits_to_keep`), not the whole vocabulary at every token.
Options of one token after a shared context (SST-2's " great" / " terrible") share one row: the
logits at its last position score them all, so such tasks cost one row per example, not one per option.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

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

    The model's logits are kept for the last `kept` positions of every row. Option o is scored from
    row option_rows[o]: at kept position j it predicts targets[o, j] where target_mask[o, j]. An option
    with its own row (context + continuation) predicts its continuation from the positions before it;
    options sharing a context row predict their one token from the row's last position. Example e's
    options are slots[e, :] where slot_mask[e, :]; its gold one is labels[e].

    A batch may be padded to a larger static shape (`padded`): extra rows, positions, options and
    examples that no loss, score or gradient sees (example_mask is False for the padded examples)."""

    input_ids: torch.Tensor  # [rows, length]
    attention_mask: torch.Tensor  # [rows, length]
    option_rows: torch.Tensor  # [options]
    targets: torch.Tensor  # [options, kept]
    target_mask: torch.Tensor  # [options, kept]
    slots: torch.Tensor  # [examples, max options]: index of each example's options
    slot_mask: torch.Tensor  # [examples, max options]
    labels: torch.Tensor  # [examples]: index of the gold option within its example
    example_mask: torch.Tensor  # [examples]: False for padding
    options_per_example: list[int]  # of the real examples
    gold_only: bool = False  # one option per example, its gold one (the LM loss)

    TENSORS = ("input_ids", "attention_mask", "option_rows", "targets", "target_mask", "slots", "slot_mask",
               "labels", "example_mask")

    @property
    def kept(self) -> int:
        """Positions whose logits the scores need (`logits_to_keep`)."""
        return self.targets.shape[1]

    @property
    def examples(self) -> int:
        """Real examples (padded ones come after them)."""
        return len(self.options_per_example)

    @property
    def shape(self) -> "BatchShape":
        return BatchShape(*self.input_ids.shape, self.targets.shape[0], self.kept, *self.slots.shape)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in self.TENSORS}

    def to(self, device, non_blocking: bool = False) -> "OptionBatch":
        return self.with_tensors({n: t.to(device, non_blocking=non_blocking) for n, t in self.tensors().items()})

    def with_tensors(self, tensors: dict[str, torch.Tensor]) -> "OptionBatch":
        return OptionBatch(**tensors, options_per_example=self.options_per_example, gold_only=self.gold_only)

    def padded(self, shape: "BatchShape", pad_id: int) -> "OptionBatch":
        """This batch at a larger shape. Extra rows are a pad token attended everywhere (a row with
        nothing to attend to would give NaN activations, and NaN·0 gradients); extra positions and kept
        positions come first (rows are left-padded, targets end at the last position); extra options
        predict nothing; an extra example has one slot, option 0, and example_mask False."""
        rows, length = self.input_ids.shape
        options, kept = self.targets.shape
        examples, slots = self.slots.shape
        if (shape.rows < rows or shape.length < length or shape.options < options or shape.kept < kept
                or shape.examples < examples or shape.slots < slots):
            raise ValueError(f"cannot pad a batch of shape {self.shape} to the smaller {shape}")
        input_ids = torch.full((shape.rows, shape.length), pad_id, dtype=torch.long)
        input_ids[:rows, shape.length - length:] = self.input_ids
        attention_mask = torch.ones((shape.rows, shape.length), dtype=torch.long)
        attention_mask[:rows] = 0
        attention_mask[:rows, shape.length - length:] = self.attention_mask
        option_rows = torch.zeros(shape.options, dtype=torch.long)
        option_rows[:options] = self.option_rows
        targets = torch.zeros((shape.options, shape.kept), dtype=torch.long)
        targets[:options, shape.kept - kept:] = self.targets
        target_mask = torch.zeros((shape.options, shape.kept), dtype=torch.bool)
        target_mask[:options, shape.kept - kept:] = self.target_mask
        slot_index = torch.zeros((shape.examples, shape.slots), dtype=torch.long)
        slot_index[:examples, :slots] = self.slots
        slot_mask = torch.zeros((shape.examples, shape.slots), dtype=torch.bool)
        slot_mask[:examples, :slots] = self.slot_mask
        slot_mask[examples:, 0] = True
        labels = torch.zeros(shape.examples, dtype=torch.long)
        labels[:examples] = self.labels
        example_mask = torch.zeros(shape.examples, dtype=torch.bool)
        example_mask[:examples] = self.example_mask
        return self.with_tensors(dict(
            input_ids=input_ids, attention_mask=attention_mask, option_rows=option_rows, targets=targets,
            target_mask=target_mask, slots=slot_index, slot_mask=slot_mask, labels=labels, example_mask=example_mask))


@dataclass(frozen=True)
class BatchShape:
    rows: int
    length: int
    options: int
    kept: int
    examples: int
    slots: int

    def bucketed(self) -> "BatchShape":
        """The static shape this batch is padded to: each size rounded up to a few values per octave
        (lengths to multiples of 8), so that few shapes cover every batch and padding costs under 25 %."""
        return BatchShape(bucket(self.rows), bucketed_length(self.length), bucket(self.options),
                          bucket(self.kept), bucket(self.examples), bucket(self.slots))


def bucketed_length(n: int) -> int:
    """A row length rounded up to its bucket, a multiple of 8, at least 16."""
    return max(16, -(-bucket(n) // 8) * 8)


def bucket(n: int) -> int:
    """n rounded up to 1..8, 10, 12, 14, 16, 20, 24, 28, 32, 40, ...: four values per octave above 8."""
    if n <= 8:
        return max(n, 1)
    step = 1 << (n.bit_length() - 3)
    return -(-n // step) * step


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
    slots = torch.zeros((len(examples), max(per_example)), dtype=torch.long)
    slot_mask = torch.zeros((len(examples), max(per_example)), dtype=torch.bool)
    first = 0
    for e, n in enumerate(per_example):
        slots[e, :n] = torch.arange(first, first + n)
        slot_mask[e, :n] = True
        first += n
    return OptionBatch(input_ids, attention_mask, option_rows, targets, target_mask, slots, slot_mask,
                       torch.tensor(labels), torch.ones(len(examples), dtype=torch.bool), per_example, gold_only)


@dataclass
class GroupedBatch:
    """One minibatch as a few batches of examples of similar length, each padded on its own: on inputs of
    uneven length (CB, RTE) one batch padded to its longest input carries about twice the real tokens. Its
    loss and gradient are the minibatch's (calls.ModelCalls combines the groups). Example i of the minibatch
    is example order[i] of the groups' examples taken in turn."""

    groups: list[OptionBatch]
    order: torch.Tensor  # [examples], int64, on the host
    _on_device: dict = field(default_factory=dict, repr=False)

    @property
    def examples(self) -> int:
        return len(self.order)

    def order_on(self, device) -> torch.Tensor:
        """`order` on `device`, copied once (SPSA evaluates a minibatch twice)."""
        if device not in self._on_device:
            self._on_device[device] = self.order.to(device)
        return self._on_device[device]


GROUP_SAVING = 0.05  # each further group (a model call of its own) must save more than this share of the tokens


def length_groups(examples: list[TokenizedExample], groups: int, gold_only: bool = False) -> list[list[int]]:
    """Indices of `examples` in at most `groups` groups of similar length: sorted by length and cut where the
    tokens of the padded batches (each group at its bucketed shape, as CUDA graphs run it) are fewest; each
    group beyond the first only where it saves over GROUP_SAVING of the tokens."""
    def rows_and_length(example: TokenizedExample) -> tuple[int, int]:  # what option_batch makes of it
        if example.shared:  # one row, the context alone
            return 1, len(example.options[0][0])
        if gold_only:
            context, continuation = example.options[example.label]
            return 1, len(context) + len(continuation)
        return example.rows, example.length

    sizes = [rows_and_length(example) for example in examples]
    order = sorted(range(len(examples)), key=lambda i: sizes[i][1])
    rows = [0]
    for i in order:
        rows.append(rows[-1] + sizes[i][0])

    def tokens(first: int, last: int) -> int:  # the group order[first:last], padded to its bucketed shape
        return bucket(rows[last] - rows[first]) * bucketed_length(sizes[order[last - 1]][1])

    n = len(order)
    # best[k][j]: fewest tokens of order[:j] in k groups; cut[k][j]: where its last group starts
    best = [[0] + [None] * n] + [[None] * (n + 1) for _ in range(groups)]
    cut = [[0] * (n + 1) for _ in range(groups + 1)]
    for k in range(1, groups + 1):
        for j in range(1, n + 1):
            for i in range(k - 1, j):
                if best[k - 1][i] is not None:
                    total = best[k - 1][i] + tokens(i, j)
                    if best[k][j] is None or total < best[k][j]:
                        best[k][j], cut[k][j] = total, i
    counts = [k for k in range(1, groups + 1) if best[k][n] is not None]
    k = counts[0]
    for more in counts[1:]:  # each group beyond k must save GROUP_SAVING of the tokens
        if best[more][n] < (1 - GROUP_SAVING) ** (more - k) * best[k][n]:
            k = more
    bounds, j = [], n
    for level in range(k, 0, -1):
        bounds.append((cut[level][j], j))
        j = cut[level][j]
    return [order[first:last] for first, last in reversed(bounds)]


def grouped_batch(examples: list[TokenizedExample], pad_id: int, gold_only: bool, groups: int) -> OptionBatch | GroupedBatch:
    """option_batch(examples), split into at most `groups` length groups (one group: the plain batch)."""
    parts = length_groups(examples, groups, gold_only) if groups > 1 and len(examples) > 1 else [list(range(len(examples)))]
    if len(parts) == 1:
        return option_batch(examples, pad_id, gold_only)
    position = {i: p for p, i in enumerate(i for part in parts for i in part)}
    return GroupedBatch([option_batch([examples[i] for i in part], pad_id, gold_only) for part in parts],
                        torch.tensor([position[i] for i in range(len(examples))], dtype=torch.long))


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
