import pytest
import torch
import torch.nn.functional as F

from zofo.batches import option_batch, tokenize_examples
from zofo.evaluation import mean_loss, predict_options
from zofo.losses import candidates_loss, lm_loss, option_scores
from zofo.tasks import Example

from conftest import tiny

EXAMPLES = [
    Example((("The film was a joy. It was", " great"), ("The film was a joy. It was", " terrible")), 0),
    Example((("Dull", " great"), ("Dull", " terrible")), 1),
    Example((("I lit a match so", " it burned."), ("I lit a match so", " the sea froze over.")), 0),
]


def unpadded_mean_logprob(model, context, continuation):
    """Reference: one row, no padding, full logits."""
    ids = torch.tensor([list(context) + list(continuation)])
    logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    targets = ids[0, 1:]
    token_logprobs = logprobs.gather(-1, targets[:, None])[:, 0]
    return token_logprobs[-len(continuation):].mean()


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-opt", "tiny-gpt2"])
def test_batched_left_padded_scores_equal_unpadded_scores(name):
    model, tokenizer = tiny(name)
    examples = tokenize_examples(EXAMPLES, tokenizer, 64)
    batch = option_batch(examples, tokenizer.pad_token_id)
    scores = option_scores(model, batch)
    expected = torch.stack([unpadded_mean_logprob(model, c, a) for e in examples for c, a in e.options])
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_options_sharing_a_context_row_score_as_if_each_had_its_own(name):
    model, tokenizer = tiny(name)
    shared = [Example((("The film was a joy. It was", "!"), ("The film was a joy. It was", "?")), 0),
              Example((("Dull", "a"), ("Dull", "b"), ("Dull", "c")), 2)]
    examples = tokenize_examples(shared + EXAMPLES, tokenizer, 64)
    assert [e.shared for e in examples] == [True, True, False, False, False]
    batch = option_batch(examples, tokenizer.pad_token_id)
    assert batch.input_ids.shape[0] == 2 + 6  # one row for each shared context, one per option otherwise
    expected = torch.stack([unpadded_mean_logprob(model, c, a) for e in examples for c, a in e.options])
    torch.testing.assert_close(option_scores(model, batch), expected, atol=1e-4, rtol=1e-4)


def test_candidates_loss_is_cross_entropy_over_option_scores():
    model, tokenizer = tiny()
    examples = tokenize_examples(EXAMPLES, tokenizer, 64)
    batch = option_batch(examples, tokenizer.pad_token_id)
    scores = option_scores(model, batch).view(3, 2)
    torch.testing.assert_close(candidates_loss(model, batch), F.cross_entropy(scores, torch.tensor([0, 1, 0])))


def test_lm_loss_is_token_mean_nll_of_the_gold_continuations():
    model, tokenizer = tiny()
    examples = tokenize_examples(EXAMPLES, tokenizer, 64)
    gold = [e.options[e.label] for e in examples]
    total = sum(-unpadded_mean_logprob(model, c, a) * len(a) for c, a in gold)
    expected = total / sum(len(a) for _, a in gold)
    loss = lm_loss(model, option_batch(examples, tokenizer.pad_token_id, gold_only=True))
    torch.testing.assert_close(loss, expected, atol=1e-4, rtol=1e-4)


def test_predictions_do_not_depend_on_how_examples_are_batched():
    model, tokenizer = tiny(seed=3)
    examples = tokenize_examples(EXAMPLES * 3, tokenizer, 64)
    one_by_one = predict_options(model, examples, tokenizer.pad_token_id, max_rows=1)
    together = predict_options(model, examples, tokenizer.pad_token_id, max_rows=64)
    assert one_by_one == together
    scores = [[unpadded_mean_logprob(model, c, a) for c, a in e.options] for e in examples]
    assert together == [max(range(len(s)), key=lambda i: s[i]) for s in scores]


def test_validation_loss_averages_the_training_loss():
    model, tokenizer = tiny()
    examples = tokenize_examples(EXAMPLES, tokenizer, 64)
    whole = candidates_loss(model, option_batch(examples, tokenizer.pad_token_id)).item()
    assert mean_loss(model, "candidates", examples, tokenizer.pad_token_id, max_rows=64) == pytest.approx(whole, rel=1e-5)
    assert mean_loss(model, "candidates", examples, tokenizer.pad_token_id, max_rows=2) == pytest.approx(whole, rel=1e-5)


# CUDA, where a GPU machine runs the tests (`python3 -m pytest tests/test_losses.py -k collapsed`), with graphs
@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_a_model_that_scores_every_candidate_alike_has_collapsed(device):
    """Its loss, ln(number of candidates), would beat a working model's: it must never be selected."""
    from zofo.calls import ModelCalls
    from zofo.errors import ModelCollapsed

    model, tokenizer = tiny()
    model.to(device)
    pad_id = tokenizer.pad_token_id
    calls = ModelCalls("graphs" if device == "cuda" else "eager", pad_id=pad_id)
    examples = tokenize_examples(EXAMPLES, tokenizer, 64)
    working = mean_loss(model, "candidates", examples, pad_id, calls=calls)  # no error
    assert working == pytest.approx(candidates_loss(model, option_batch(examples, pad_id).to(device)).item(), rel=1e-5)
    with torch.no_grad():
        model.get_output_embeddings().weight.zero_()  # uniform next-token distributions
    with pytest.raises(ModelCollapsed, match="scores the candidates of all 3 validation examples alike"):
        mean_loss(model, "candidates", examples, pad_id, max_rows=2, calls=calls)
    mean_loss(model, "lm", examples, pad_id, calls=calls)  # no candidates to tell apart: a loss, not a collapse
    one_candidate = tokenize_examples([Example((("Dull", " great"),), 0)], tokenizer, 64)
    assert mean_loss(model, "candidates", one_candidate, pad_id, calls=calls) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("peft", ["none", "lora", "prompt", "prefix"])
def test_scoring_builds_no_key_value_cache_except_prefix_tunings_own(peft):
    """transformers builds a cache in every forward by default: a copy of every layer's keys and values."""
    from transformers.cache_utils import Cache

    from zofo.adapters import with_adapters
    from zofo.config import AdapterConfig

    model, tokenizer = tiny("tiny-llama")
    if peft != "none":
        model = with_adapters(model, AdapterConfig(peft=peft), ["default"], seed=0)
    decoder = next(m for m in model.modules() if type(m).__name__ == "LlamaModel")
    caches = []
    decoder.register_forward_hook(lambda module, args, output: caches.append(
        [type(v).__name__ for v in output.values() if isinstance(v, Cache)]))
    option_scores(model, option_batch(tokenize_examples(EXAMPLES, tokenizer, 64), tokenizer.pad_token_id))
    assert caches == ([["DynamicCache"]] if peft == "prefix" else [[]])
