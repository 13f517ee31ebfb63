"""PEFT adapters through Hugging Face peft: LoRA, prefix tuning and prompt tuning, any number of them
on one base model, each under its own name (φ and z of Bilevel ZOFO, or one pair per task).

Defaults follow the paper: LoRA r=8, alpha=16 on the attention query and value projections
(peft's per-architecture default targets), 5 prefix tokens, 10 soft-prompt tokens; as in MeZO, whose setup
the paper follows, a prefix starts from the model's own keys and values for random tokens.

θ, the base model's own weights, is told apart from every adapter's by peft's naming (an adapter's
parameters carry its name as a path component) and named as in the plain model's state dict, so that the
same weight has the same name with or without adapters attached.
"""

from __future__ import annotations

import torch
from peft import (
    LoraConfig,
    PeftConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptTuningConfig,
    PromptTuningInit,
    TaskType,
    get_peft_model,
    get_peft_model_state_dict,
    set_peft_model_state_dict,
)

from .config import AdapterConfig

DEFAULT = "default"  # peft's name: an adapter saved under it loads with PeftModel.from_pretrained as usual


def peft_config(adapter: AdapterConfig) -> PeftConfig:
    if adapter.peft == "lora":
        # target_modules=None lets peft pick the query/value projections of the architecture
        # (q_proj/v_proj for Llama and OPT, the fused c_attn for GPT-2).
        return LoraConfig(task_type=TaskType.CAUSAL_LM, r=adapter.lora_r, lora_alpha=adapter.lora_alpha, lora_dropout=0.0)
    if adapter.peft == "prefix":
        return PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=adapter.prefix_tokens)
    if adapter.peft == "prompt":
        # Start the soft prompt from embeddings of random vocabulary tokens (Lester et al.), not N(0, 1),
        # which is far off the scale of a trained embedding table.
        return PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=adapter.prompt_tokens,
                                  prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB)
    raise ValueError(f"no adapter to build for peft {adapter.peft!r}")


def with_adapters(model, adapter: AdapterConfig, names: list[str], seed: int, same_start: bool = False) -> PeftModel:
    """`model` with one trainable adapter per name, initialised from `seed` (in order of the names); with
    same_start every adapter starts from the first one's values. θ is frozen; the first name is active."""
    torch.manual_seed(seed)
    config = peft_config(adapter)
    model = get_peft_model(model, config, adapter_name=names[0])
    for name in names[1:]:
        model.add_adapter(name, config)
    if adapter.peft == "prefix" and adapter.prefix_init == "real-activations":
        for name in names[:1] if same_start else names:  # with same_start the others copy the first, below
            start_prefix_from_real_activations(model, name)
    if same_start:
        for name in names[1:]:
            load_adapter_state(model, names[0], adapter_state(model, names[0]), into=name)
    for name in names:
        for p in adapter_parameters(model, name):
            p.requires_grad_(True)
    for _, p in base_parameters(model):
        p.requires_grad_(False)
    count_positions_from_mask(model)
    model.set_adapter(names[0])
    return model.eval()  # no dropout, as in MeZO: the same network in training and evaluation


@torch.no_grad()
def start_prefix_from_real_activations(model: PeftModel, name: str) -> None:
    """Start prefix `name` from the keys and values the base model computes for random vocabulary tokens, as
    MeZO does (its --prefix_init_by_real_act), not from peft's N(0, 1): random keys and values, far off the
    scale of the model's own, disrupt every layer's attention at the start (FO-prefix on SST-2, 100 steps: 58.7 %
    from N(0, 1), 88.2 % from real activations; results/README.md, "Session 24")."""
    config = model.peft_config[name]
    tokens = torch.randint(0, model.config.vocab_size, (1, config.num_virtual_tokens))
    embedding = model.prompt_encoder[name].embedding.weight
    outputs = model.get_base_model()(input_ids=tokens.to(embedding.device), use_cache=True)
    cache = outputs["cache"] if "cache" in outputs else outputs["past_key_values"]  # its name from transformers 5.2x
    # peft reads the weight as (tokens, layers × [key, value], heads, head dim) (PeftModel.get_prompt); the
    # cache holds each layer's as (1, heads, tokens, head dim)
    per_layer = [tensor[0].transpose(0, 1) for layer in cache.layers for tensor in (layer.keys, layer.values)]
    embedding.copy_(torch.stack(per_layer, dim=1).reshape(embedding.shape))


def load_adapter(model, folder) -> PeftModel:
    """A saved adapter on `model`, numbering positions as zofo trained it (see positions_from_attention_mask)."""
    model = PeftModel.from_pretrained(model, folder)
    count_positions_from_mask(model)
    return model.eval()


def count_positions_from_mask(model: PeftModel) -> None:
    """Under prefix or prompt tuning, give the base model position ids that skip left padding."""
    if model.active_peft_config.is_prompt_learning:
        model.get_base_model().register_forward_pre_hook(positions_from_attention_mask, with_kwargs=True)


def positions_from_attention_mask(module, args, kwargs):
    """Position ids that count attended tokens only, for the base model under prefix or prompt tuning.

    peft drops the position ids of prompt-learning models, so the base model numbers every position of
    a left-padded row, padding included: a row's positions (and its loss) would then change with the
    length of its batch-mates, or with the padding of a static-shape batch. The attention mask peft hands
    down covers the virtual tokens too, so these positions start after them, as without padding."""
    mask = kwargs.get("attention_mask")
    if args or kwargs.get("position_ids") is not None or mask is None or mask.dim() != 2:
        return None
    inputs = kwargs.get("inputs_embeds") if kwargs.get("inputs_embeds") is not None else kwargs.get("input_ids")
    if inputs is None:
        return None
    kwargs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)[:, -inputs.shape[1]:]
    return args, kwargs


def is_adapter_parameter(model, name: str) -> bool:
    return bool(set(name.split(".")) & set(getattr(model, "peft_config", {})))


def adapter_parameters(model, name: str) -> list[torch.nn.Parameter]:
    """The parameters of the adapter called `name`."""
    return [p for n, p in model.named_parameters() if name in n.split(".")]


def base_parameters(model) -> list[tuple[str, torch.nn.Parameter]]:
    """θ: every weight of the base model, none of the adapters', named as in the plain model."""
    if not isinstance(model, PeftModel):
        return list(model.named_parameters())
    return base_entries(model, model.get_base_model().named_parameters())


def base_entries(model, named) -> list[tuple[str, object]]:
    """θ's entries of (name, value) pairs named as in peft's base model (its parameters, or its state dict),
    under the plain model's names; the adapters' entries left out."""
    return [(n.replace(".base_layer", ""), v) for n, v in named if not is_adapter_parameter(model, n)]


def adapter_state(model, name: str) -> dict[str, torch.Tensor]:
    """A copy of the adapter's weights (peft's state-dict naming, without the adapter's name)."""
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model, adapter_name=name).items()}


def load_adapter_state(model, name: str, state: dict[str, torch.Tensor], into: str | None = None) -> None:
    """Load a state saved from adapter `name` into adapter `into` (default: the same adapter)."""
    set_peft_model_state_dict(model, state, adapter_name=into or name)


def activate(model, name: str) -> None:
    """Make `name` the active adapter; peft's set_adapter walks every module, so skip it when it is."""
    if model.active_adapter != name:
        model.set_adapter(name)
