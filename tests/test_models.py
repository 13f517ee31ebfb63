import pytest
import torch

from zofo.models import TINY_MODELS, byte_tokenizer, load_model, resolve_dtype

from conftest import tiny


@pytest.mark.parametrize("name", TINY_MODELS)
def test_tiny_models_have_explicit_special_tokens(name):
    model, tokenizer = tiny(name)
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == len(tokenizer) - 1
    assert model.config.pad_token_id == model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert sum(p.numel() for p in model.parameters()) < 500_000
    logits = model(**tokenizer(["hello"], return_tensors="pt")).logits
    assert logits.shape == (1, 5, len(tokenizer))


def test_tiny_model_weights_follow_the_seed():
    first, _ = tiny(seed=1)
    again, _ = tiny(seed=1)
    other, _ = tiny(seed=2)
    weight = lambda m: m.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(weight(first), weight(again))
    assert not torch.equal(weight(first), weight(other))


@pytest.mark.parametrize("dtype, expected", [("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)])
def test_dtype_option(dtype, expected):
    model, _ = tiny(dtype=dtype)
    assert {p.dtype for p in model.parameters()} == {expected}


def test_unknown_dtype_names_the_choices():
    with pytest.raises(ValueError, match="bf16"):
        resolve_dtype("float8")


def test_byte_tokenizer_round_trips_text():
    tokenizer = byte_tokenizer()
    text = "Ça marche? It was great.\n"
    ids = tokenizer(text)["input_ids"]
    assert len(ids) == len(text.encode())
    assert tokenizer.decode(ids) == text


def test_local_folder_loads_like_a_hub_model(tmp_path):
    model, tokenizer = tiny("tiny-opt")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tokenizer = load_model(str(tmp_path), device="cpu")
    inputs = tokenizer(["a test"], return_tensors="pt")
    assert torch.allclose(model(**inputs).logits, loaded(**inputs).logits)
    assert loaded_tokenizer.padding_side == "left"


def test_a_tokenizer_without_a_pad_token_pads_with_eos_on_the_left(tmp_path):
    # as the bundled model's GGUF tokenizer converts under some transformers versions
    from zofo.models import load_tokenizer

    model, tokenizer = tiny("tiny-opt")
    tokenizer.pad_token = None
    tokenizer.padding_side = "right"
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.pad_token == loaded.eos_token and loaded.padding_side == "left"
