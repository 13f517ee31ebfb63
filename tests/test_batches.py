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
    assert batch.continuation_mask.tolist() == [[False, True, True], [True, True, True], [False, True, True]]
    assert tokenizer.decode(batch.input_ids[1, 1:]) == "ab yz"

    gold = option_batch(examples, tokenizer.pad_token_id, gold_only=True)
    assert gold.options_per_example == [1, 1] and gold.labels.tolist() == [0, 0]
    assert tokenizer.decode(gold.input_ids[0][gold.attention_mask[0].bool()]) == "ab yz"


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
