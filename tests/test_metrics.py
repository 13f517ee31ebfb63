"""Metrics: known values computed by hand."""

import pytest

from zofo.metrics import (
    accuracy,
    compute_metric,
    exact_match,
    f1_score,
    macro_f1,
    normalize_answer,
    token_f1,
)


def test_accuracy():
    assert accuracy([0, 1, 1, 0], [0, 1, 0, 0]) == 0.75


def test_macro_f1_hand_computed():
    # class 0: tp=1 fp=1 fn=1 -> 0.5; class 1: tp=2 fp=1 fn=0 -> 0.8; class 2: tp=0 fn=1 -> 0
    references = [0, 0, 1, 1, 2]
    predictions = [0, 1, 1, 1, 0]
    assert macro_f1(predictions, references) == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_macro_f1_counts_classes_only_predicted():
    # class 0: tp=1 fn=1 -> 2/3; class 1 (only predicted): fp=1 -> 0 (as sklearn)
    assert macro_f1([0, 1], [0, 0]) == pytest.approx(1 / 3)


def test_macro_f1_perfect():
    assert macro_f1(["a", "b", "c"], ["a", "b", "c"]) == 1.0


def test_normalize_answer():
    assert normalize_answer("  The Cat,  sat on AN   old mat!  ") == "cat sat on old mat"
    assert normalize_answer("theatre") == "theatre"  # articles only as whole words


def test_squad_f1_and_exact_match():
    # normalized: "cat sat" vs "cat sat down": precision 1, recall 2/3 -> F1 0.8
    assert token_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)
    assert exact_match("the cat sat", "a cat sat down") == 0.0
    assert exact_match("The cat sat.", ["dog", "a cat sat"]) == 1.0
    assert token_f1("dog", "cat") == 0.0
    assert token_f1("", "") == 1.0


def test_best_over_gold_answers():
    assert f1_score("cat sat", ["dog", "cat sat down", "the cat sat"]) == 1.0
    assert f1_score("cat", ["cat sat", "dog"]) == pytest.approx(2 / 3)


def test_compute_metric():
    assert compute_metric("accuracy", [1, 0], [1, 1]) == {"accuracy": 0.5}
    scores = compute_metric("macro_f1", [0, 1, 1, 1, 0], [0, 0, 1, 1, 2])
    assert scores == pytest.approx({"macro_f1": 1.3 / 3, "accuracy": 0.6})
    scores = compute_metric("f1", ["the cat sat", "Paris"], [["a cat sat down"], "paris"])
    assert scores == pytest.approx({"f1": (0.8 + 1.0) / 2, "em": 0.5})


def test_compute_metric_errors():
    with pytest.raises(ValueError, match="unknown metric"):
        compute_metric("bleu", ["a"], ["a"])
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        compute_metric("accuracy", [1, 0], [1])
