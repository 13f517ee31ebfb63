"""Task losses on an OptionBatch, shared by every method (first-order, MeZO, Bilevel ZOFO).

- "candidates": cross-entropy over the candidates' scores, each score the mean log-probability of the
  candidate's tokens given its context (MeZO's classification loss).
- "lm": mean cross-entropy of the gold continuation's tokens (the LM loss; the only choice for
  generation tasks, and an option for multiple-choice tasks such as COPA).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .batches import OptionBatch

LOSSES = ("candidates", "lm")


def model_inputs(model, batch: OptionBatch) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask, plus position ids that start at 0 on the first real token of each
    left-padded row (models with absolute positions such as GPT-2 would otherwise see shifted positions),
    and no key/value cache: transformers builds one in every forward by default (a copy of every layer's
    keys and values, which nothing here reads; with compiled layers, a specialisation per layer). peft's
    prefix and prompt tuning ignore position ids; prefix tuning's trained prefix is a cache, so it keeps it."""
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is None or not peft_config.is_prompt_learning:
        inputs["position_ids"] = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    if peft_config is None or peft_config.peft_type != "PREFIX_TUNING":
        inputs["use_cache"] = False
    return inputs


def target_logprobs(model, batch: OptionBatch) -> torch.Tensor:
    """Log-probability of every option's target tokens, [options, kept positions] (0 where masked)."""
    logits = model(**model_inputs(model, batch), logits_to_keep=batch.kept).logits.float()
    positions = torch.arange(batch.kept, device=logits.device)
    picked = logits[batch.option_rows[:, None], positions[None, :], batch.targets]
    normaliser = logits.logsumexp(-1)[batch.option_rows]  # log-softmax without a [.., vocab] copy
    return (picked - normaliser) * batch.target_mask


def option_scores(model, batch: OptionBatch) -> torch.Tensor:
    """Mean log-probability of each option's continuation, [options] (0 for an option that predicts nothing)."""
    return target_logprobs(model, batch).sum(-1) / batch.target_mask.sum(-1).clamp(min=1)


def grouped_scores(scores: torch.Tensor, batch: OptionBatch) -> torch.Tensor:
    """[options] -> [examples, slots], -inf where an example has fewer options. Static shapes: no
    host synchronisation, so it can be captured in a CUDA graph."""
    return scores[batch.slots].masked_fill(~batch.slot_mask, float("-inf"))


def example_losses(model, batch: OptionBatch, loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example loss numerators and weights: the loss of any group of examples is
    values[group].sum() / weights[group].sum(). "candidates": cross-entropy per example, weight 1;
    "lm": summed NLL of the gold continuation's tokens, weight = its token count (build the batch gold_only).
    Padded examples have value and weight 0."""
    weights = example_weights(batch, loss)
    if loss == "candidates":
        scores = grouped_scores(option_scores(model, batch), batch)
        return F.cross_entropy(scores, batch.labels, reduction="none") * weights, weights
    nll = -target_logprobs(model, batch).sum(-1)[batch.slots[:, 0]]
    return nll * batch.example_mask.to(torch.float32), weights


def example_weights(batch: OptionBatch, loss: str) -> torch.Tensor:
    """example_losses' weights, from the batch alone (no model call)."""
    real = batch.example_mask.to(torch.float32)
    if loss == "candidates":
        return real
    if loss == "lm":
        if not batch.gold_only:
            raise ValueError("the LM loss needs a gold-only batch (one row per example)")
        return batch.target_mask.sum(-1)[batch.slots[:, 0]].to(torch.float32) * real
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def group_means(values: torch.Tensor, weights: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """The loss of each consecutive group of examples (sizes), e.g. [B_FT, B_P] in one batch."""
    real = sum(sizes)  # padded examples come last
    return [v.sum() / w.sum() for v, w in zip(torch.split(values[:real], sizes), torch.split(weights[:real], sizes))]


def candidates_loss(model, batch: OptionBatch) -> torch.Tensor:
    values, weights = example_losses(model, batch, "candidates")
    return values.sum() / weights.sum()


def lm_loss(model, batch: OptionBatch) -> torch.Tensor:
    """Token-mean NLL of the continuations; build the batch with gold_only=True."""
    values, weights = example_losses(model, batch, "lm")
    return values.sum() / weights.sum()


def loss_function(name: str):
    if name == "candidates":
        return candidates_loss
    if name == "lm":
        return lm_loss
    raise ValueError(f"loss must be one of {LOSSES}, got {name!r}")
