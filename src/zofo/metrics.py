"""Evaluation metrics: accuracy, macro-F1, and SQuAD-style token F1 / exact match.

All values are fractions in [0, 1].
"""

from __future__ import annotations

import re
import string
from collections import Counter

PUNCTUATION = set(string.punctuation)


def _check_lengths(predictions, references) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")


def accuracy(predictions, references) -> float:
    """Fraction of predictions equal to their reference."""
    _check_lengths(predictions, references)
    return sum(p == r for p, r in zip(predictions, references)) / len(references)


def macro_f1(predictions, references) -> float:
    """Per-class F1 averaged over every class seen in references or predictions (sklearn's macro F1)."""
    _check_lengths(predictions, references)
    scores = []
    for label in set(references) | set(predictions):
        true_pos = sum(p == label and r == label for p, r in zip(predictions, references))
        false_pos = sum(p == label and r != label for p, r in zip(predictions, references))
        false_neg = sum(p != label and r == label for p, r in zip(predictions, references))
        scores.append(2 * true_pos / (2 * true_pos + false_pos + false_neg))
    return sum(scores) / len(scores)


def normalize_answer(text: str) -> str:
    """SQuAD normalization: lower-case, drop punctuation and articles (a/an/the), collapse whitespace."""
    text = text.lower()
    text = "".join(char for char in text if char not in PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _golds(gold) -> list[str]:
    """Gold answers as a list (one string is accepted)."""
    return [gold] if isinstance(gold, str) else list(gold)


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD token-overlap F1 between two answers (two empty answers count as a match)."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision = common / len(pred_tokens)
    recall = common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, golds) -> float:
    """Best token F1 of the prediction over the gold answers."""
    return max(token_f1(prediction, gold) for gold in _golds(golds))


def exact_match(prediction: str, golds) -> float:
    """1.0 if the normalized prediction equals any normalized gold answer, else 0.0."""
    return float(any(normalize_answer(prediction) == normalize_answer(gold) for gold in _golds(golds)))


def compute_metric(name: str, predictions, references) -> dict[str, float]:
    """Scores by metric name: "accuracy" -> {accuracy}; "macro_f1" -> {macro_f1, accuracy};
    "f1" -> {f1, em} (references: a list of gold answers per example, or one string each)."""
    if name == "accuracy":
        return {"accuracy": accuracy(predictions, references)}
    if name == "macro_f1":
        return {"macro_f1": macro_f1(predictions, references), "accuracy": accuracy(predictions, references)}
    if name == "f1":
        _check_lengths(predictions, references)
        n = len(references)
        return {
            "f1": sum(f1_score(p, golds) for p, golds in zip(predictions, references)) / n,
            "em": sum(exact_match(p, golds) for p, golds in zip(predictions, references)) / n,
        }
    raise ValueError(f"unknown metric {name!r}; known metrics: accuracy, macro_f1, f1")
