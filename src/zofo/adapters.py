"""PEFT adapters through Hugging Face peft: LoRA, prefix tuning and prompt tuning.

Defaults follow the paper: LoRA r=8, alpha=16 on the attention query and value projections
(peft's per-architecture default targets), 5 prefix tokens, 10 soft-prompt tokens.
"""

from __future__ import annotations

from peft import (
    LoraConfig,
    PeftConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptTuningConfig,
    PromptTuningInit,
    TaskType,
    get_peft_model,
)

PEFT_TYPES = ("lora", "prefix", "prompt")


def peft_config(
    peft: str, lora_r: int = 8, lora_alpha: int = 16, prefix_tokens: int = 5, prompt_tokens: int = 10
) -> PeftConfig:
    if peft == "lora":
        # target_modules=None lets peft pick the query/value projections of the architecture
        # (q_proj/v_proj for Llama and OPT, the fused c_attn for GPT-2).
        return LoraConfig(task_type=TaskType.CAUSAL_LM, r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.0)
    if peft == "prefix":
        return PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=prefix_tokens)
    if peft == "prompt":
        # Start the soft prompt from embeddings of random vocabulary tokens (Lester et al.), not N(0, 1),
        # which is far off the scale of a trained embedding table.
        return PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=prompt_tokens,
            prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB,
        )
    raise ValueError(f"peft must be one of {PEFT_TYPES}, got {peft!r}")



def adapter_of(config) -> PeftConfig:
    """The adapter a TrainConfig asks for (its peft, lora_*, prefix_tokens and prompt_tokens fields)."""
    return peft_config(config.peft, config.lora_r, config.lora_alpha, config.prefix_tokens, config.prompt_tokens)

def attach_adapter(model, config: PeftConfig, adapter_name: str = "default") -> PeftModel:
    """Wrap `model` with a trainable adapter; the base weights are frozen by peft."""
    return get_peft_model(model, config, adapter_name=adapter_name)


def trainable_parameters(model) -> list:
    return [p for p in model.parameters() if p.requires_grad]
