"""Evaluation: candidate scoring, greedy generation, task metrics and validation loss."""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from . import distributed
from .batches import TokenizedExample, chunks_by_rows, context_batch, option_batch
from .calls import ModelCalls
from .errors import ModelCollapsed
from .metrics import compute_metric
from .tasks import Task


@torch.no_grad()
def predict_options(model, examples: list[TokenizedExample], pad_id: int, max_rows: int = 32,
                    calls: ModelCalls | None = None) -> list[int]:
    """Index of the highest-scoring option of each example; several examples share one forward, and
    the predictions reach the host in one synchronisation at the end."""
    calls = calls or ModelCalls(pad_id=pad_id)
    chunks = chunks_by_rows(examples, max_rows)
    argmaxes = [calls.scores(model, option_batch([examples[i] for i in chunk], pad_id)).argmax(-1)
                for chunk in tqdm(chunks, desc="scoring", leave=False, unit="batch", disable=not distributed.is_main())]
    predictions = [0] * len(examples)
    if chunks:
        for i, prediction in zip([i for chunk in chunks for i in chunk], torch.cat(argmaxes).tolist()):
            predictions[i] = prediction
    return predictions


@torch.no_grad()
def generate_answers(
    model, tokenizer, examples: list[TokenizedExample], batch_size: int = 16, max_new_tokens: int = 50
) -> list[str]:
    """Greedy decoding of each example's context, cut at the first newline."""
    device = model.device
    answers = [""] * len(examples)
    order = chunks_by_rows([TokenizedExample(e.options[:1], 0) for e in examples], batch_size)
    for chunk in tqdm(order, desc="generating", leave=False, unit="batch", disable=not distributed.is_main()):
        inputs = {k: v.to(device) for k, v in context_batch([examples[i] for i in chunk], tokenizer.pad_token_id).items()}
        output = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, stop_strings=["\n"], tokenizer=tokenizer,
            pad_token_id=tokenizer.pad_token_id,
        )
        new_tokens = output[:, inputs["input_ids"].shape[1]:]
        for i, text in zip(chunk, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
            answers[i] = text.split("\n")[0].strip()
    return answers


def evaluate(model, tokenizer, task: Task, examples: list[TokenizedExample], batch_size: int = 32,
             max_new_tokens: int = 50, calls: ModelCalls | None = None) -> dict[str, float]:
    """The task's metric(s) on `examples`: accuracy / macro-F1 by candidate scoring, F1 / EM by generation.
    On several processes each rank predicts its shard of the examples and the predictions are gathered."""
    was_training = model.training
    model.eval()
    shard = distributed.evaluation_shard(examples)
    try:
        if task.generative:
            predictions = distributed.evaluation_gather(generate_answers(model, tokenizer, shard, batch_size, max_new_tokens))
            return compute_metric(task.metric, predictions, [list(e.answers) for e in examples])
        predictions = distributed.evaluation_gather(predict_options(model, shard, tokenizer.pad_token_id, batch_size, calls))
        return compute_metric(task.metric, predictions, [e.label for e in examples])
    finally:
        model.train(was_training)


@torch.no_grad()
def mean_loss(model, loss: str, examples: list[TokenizedExample], pad_id: int, max_rows: int = 32,
              calls: ModelCalls | None = None, reduce=None) -> float:
    """The training loss over `examples` (the validation loss that selects checkpoints): per-example
    values summed on the device, one synchronisation at the end. `reduce` sums the totals of every
    rank's shard (distributed.sums). Raises ModelCollapsed when the model scores the candidates of
    every example alike: its loss, ln(number of candidates), then beats a working model's, and no step
    can move it again (MeZO's two perturbed losses are equal, so its projected gradient is 0)."""
    calls = calls or ModelCalls(pad_id=pad_id)
    was_training = model.training
    model.eval()
    try:
        chunks = chunks_by_rows(examples, max_rows)
        # ln(number of candidates) of each example in the chunks' order, on the device before any forward
        ln_options = torch.tensor([math.log(len(examples[i].options)) for chunk in chunks for i in chunk],
                                  device=model.device)
        # loss numerators, weights, examples with candidates to choose between, those scored alike
        sums = torch.zeros(4, device=model.device)
        done = 0
        for chunk in chunks:
            batch = option_batch([examples[i] for i in chunk], pad_id, gold_only=loss == "lm")
            values, weights = calls.losses(model, batch, loss)
            sums[0] += values.sum()
            sums[1] += weights.sum()
            if loss == "candidates":
                sums[2:] += candidates_scored_alike(values[: len(chunk)], ln_options[done: done + len(chunk)])
            done += len(chunk)
        if reduce is not None:
            sums = reduce(sums)
        mean, choices, alike = torch.stack([sums[0] / sums[1], sums[2], sums[3]]).tolist()
        if choices and alike == choices:
            raise ModelCollapsed(f"the model collapsed: it scores the candidates of all {int(choices)} validation examples "
                                 f"alike (validation loss {mean:.4f}, ln of the number of candidates), so no step can move "
                                 "it again: lower the learning rate")
        return mean
    finally:
        model.train(was_training)


def candidates_scored_alike(values: torch.Tensor, ln_options: torch.Tensor) -> torch.Tensor:
    """[examples with two or more candidates, those whose candidates the model scores alike], from the
    candidates loss's per-example values: cross-entropy over k equal scores is ln k, to rounding."""
    choice = ln_options > 0
    alike = choice & ((values - ln_options).abs() < 1e-4)
    return torch.stack([choice.sum(), alike.sum()]).float()
