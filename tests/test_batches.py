import pytest

from zofo.batches import MinibatchSampler, chunks_by_rows, option_batch, tokenize_examples
from zofo.models import byte_tokenizer
from zofo.tasks import Example


@pytest.fixture
def tokenizer():
    return byte_tokenizer()


def test_long_contexts_lose_tokens_from_the_left(tokenizer):
    example = Example(options=(("0123456789", " yes"), ("0123456789", " no")), label=1)
    [tokenized] = tokenize_examples([example], tokenizer, max_length=8)
    (context, answer), (context_no, answer_no) = tokenized.options
    assert tokenizer.decode(answer) == " yes" and tokenizer.decode(answer_no) == " no"
    assert tokenizer.decode(context) == "6789"  # 8 - len(" yes") tokens, the end of the context kept
    assert tokenizer.decode(context_no) == "56789"
    assert tokenized.label == 1


def test_option_batch_is_left_padded_with_the_continuation_at_the_end(tokenizer):
    examples = tokenize_examples(
        [Example((("ab", " x"), ("ab", " yz")), 1), Example((("abcd", " q"),), 0)], tokenizer, 64
    )
    batch = option_batch(examples, tokenizer.pad_token_id)
    assert batch.options_per_example == [2, 1]
    assert batch.labels.tolist() == [1, 0]
    assert batch.input_ids.shape == (3, 6)
    assert batch.attention_mask.tolist() == [[0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]
    assert batch.option_rows.tolist() == [0, 1, 2]
    # logits of the last 3 + 1 positions are kept; each option predicts its tokens from the positions before them
    assert batch.kept == 4
    assert batch.target_mask.tolist() == [[False, True, True, False], [True, True, True, False],
                                          [False, True, True, False]]
    assert tokenizer.decode(batch.targets[1, :3]) == " yz"
    assert tokenizer.decode(batch.input_ids[1, 1:]) == "ab yz"

    gold = option_batch(examples, tokenizer.pad_token_id, gold_only=True)
    assert gold.options_per_example == [1, 1] and gold.labels.tolist() == [0, 0]
    assert tokenizer.decode(gold.input_ids[0][gold.attention_mask[0].bool()]) == "ab yz"


def test_one_token_options_after_a_shared_context_share_one_row(tokenizer):
    shared = Example((("abc", "x"), ("abc", "y"), ("abc", "z")), 2)  # one byte each: one token
    own = Example((("ab", " x"), ("ab", " yz")), 1)
    examples = tokenize_examples([shared, own], tokenizer, 64)
    assert examples[0].shared and examples[0].rows == 1 and not examples[1].shared and examples[1].rows == 2
    batch = option_batch(examples, tokenizer.pad_token_id)
    assert batch.input_ids.shape[0] == 1 + 2
    assert batch.option_rows.tolist() == [0, 0, 0, 1, 2]
    assert tokenizer.decode(batch.input_ids[0][batch.attention_mask[0].bool()]) == "abc"
    # the shared options are predicted from the context's last position, the last kept one
    assert batch.target_mask[:3].tolist() == [[False, False, False, True]] * 3
    assert tokenizer.decode(batch.targets[:3, -1]) == "xyz"


def test_chunks_cover_every_example_once_within_the_row_limit(tokenizer):
    examples = tokenize_examples(
        [Example(tuple((("c" * (i % 7), f" {j}") for j in range(1 + i % 3))), 0) for i in range(20)], tokenizer, 64
    )
    chunks = chunks_by_rows(examples, max_rows=5)
    assert sorted(i for chunk in chunks for i in chunk) == list(range(20))
    assert all(sum(len(examples[i].options) for i in chunk) <= 5 for chunk in chunks)


def test_sampler_draws_each_example_once_per_epoch_and_resumes():
    sampler = MinibatchSampler(10, 3, seed=7)
    epoch = [i for _ in range(3) for i in sampler.next()]
    assert sorted(epoch) == sorted(set(epoch)) and len(epoch) == 9
    state = sampler.state_dict()
    rest = [sampler.next() for _ in range(5)]
    resumed = MinibatchSampler(10, 3, seed=7)
    resumed.load_state_dict(state)
    assert [resumed.next() for _ in range(5)] == rest
    assert MinibatchSampler(10, 3, seed=8).next() != MinibatchSampler(10, 3, seed=7).next()
