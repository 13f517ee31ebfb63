import json

import pytest
import torch
from peft import PeftModel

from safetensors.torch import load_file

from zofo.adapters import base_parameters
from zofo.config import make_config
from zofo.data import prepare_tasks
from zofo.experiment import run_training
from zofo.models import load_model
from zofo.records import read_records as read_log


def small_config(tmp_path, **overrides):
    values = dict(model="tiny-llama", method="fo", task="sst2", n_train=8, n_val=8, n_test=16, batch_size=8, steps=30,
                  eval_every=10, lr=1e-2, device="cpu", out_dir=str(tmp_path / "run"))
    return make_config({**values, **overrides})


# Soft prompts and prefixes move a random two-layer model's outputs slowly: larger steps, smaller margins.
@pytest.mark.parametrize("peft, lr, margin", [("lora", 1e-2, 0.05), ("prefix", 1e-1, 0.02), ("prompt", 1e-1, 0.002)])
def test_adam_on_the_adapter_fits_a_full_batch_and_leaves_the_base_frozen(tmp_path, data_dir, peft, lr, margin):
    config = small_config(tmp_path, peft=peft, lr=lr, data_dir=str(data_dir), zero_shot=False)
    run_training(config)
    losses = [r["train_loss"] for r in read_log(config.run_dir() / "log.jsonl") if "train_loss" in r]
    assert len(losses) == 30
    assert losses[-1] < losses[0] - margin
    assert not (config.run_dir() / "model").exists()  # θ was not trained, so not saved
    base, _ = load_model(config.model, device="cpu")
    model = PeftModel.from_pretrained(base, config.run_dir() / "adapter")
    saved = load_file(config.run_dir() / "adapter" / "adapter_model.safetensors")
    assert saved and all(".default." not in name for name in saved)
    fresh = dict(load_model(config.model, device="cpu")[0].named_parameters())
    theta = base_parameters(model)
    assert {name for name, _ in theta} == set(fresh)
    for name, p in theta:
        assert torch.equal(p, fresh[name]), f"base weight {name} changed"


def test_run_folder_keeps_the_validation_selected_adapter(tmp_path, data_dir):
    config = small_config(tmp_path, data_dir=str(data_dir), n_train=32, steps=40, batch_size=4)
    metrics = run_training(config)
    folder = config.run_dir()

    assert {"config.yaml", "log.jsonl", "metrics.json", "loss_curves.png", "adapter"} <= {p.name for p in folder.iterdir()}
    saved = json.loads((folder / "metrics.json").read_text())
    assert saved["test"] == metrics["test"] and "accuracy" in saved["zero_shot"]
    assert saved["data"]["sizes"] == {"train": 32, "validation": 8, "test": 16}

    val = [(r["step"], r["val_loss"]) for r in read_log(folder / "log.jsonl") if "val_loss" in r]
    assert [step for step, _ in val] == [10, 20, 30, 40]
    best_step, best_loss = min(val, key=lambda item: item[1])
    assert saved["best_step"] == best_step

    # The saved adapter is the selected one: plain transformers + peft reproduce its validation loss.
    model, tokenizer = load_model("tiny-llama", device="cpu")
    model = PeftModel.from_pretrained(model, folder / "adapter").eval()
    reloaded = prepare_tasks(config, tokenizer).validation_loss(model)
    assert reloaded == pytest.approx(best_loss, rel=1e-5)


@pytest.mark.parametrize("model_name", ["tiny-gpt2", "tiny-opt", "tiny-llama"])
def test_a_prefix_starts_as_the_keys_and_values_the_model_computes_for_random_tokens(model_name, monkeypatch):
    """MeZO's prefix start (--prefix_init_by_real_act): each adapter's prefix, as peft hands it to the layers, is
    the model's own cache for random vocabulary tokens, drawn from the run's seed; `random` keeps peft's N(0, 1)."""
    from zofo import adapters
    from zofo.config import AdapterConfig

    drawn, randint = [], torch.randint
    monkeypatch.setattr(adapters.torch, "randint", lambda *a, **k: drawn.append(randint(*a, **k)) or drawn[-1])
    model = adapters.with_adapters(load_model(model_name, device="cpu")[0], AdapterConfig(peft="prefix"),
                                   ["phi", "z"], seed=3)
    assert len(drawn) == 2 and not torch.equal(*drawn)  # φ and z start apart unless asked to start alike
    for name, tokens in zip(["phi", "z"], drawn):
        model.set_adapter(name)
        outputs = model.get_base_model()(input_ids=tokens, use_cache=True)
        real = outputs["cache"] if "cache" in outputs else outputs["past_key_values"]
        prefix = model.get_prompt(batch_size=1)
        assert len(prefix.layers) == len(real.layers) == 2
        for ours, theirs in zip(prefix.layers, real.layers):
            torch.testing.assert_close(ours.keys, theirs.keys)
            torch.testing.assert_close(ours.values, theirs.values)
    same = adapters.with_adapters(load_model(model_name, device="cpu")[0], AdapterConfig(peft="prefix"),
                                  ["phi", "z"], seed=3, same_start=True)
    assert torch.equal(same.prompt_encoder["phi"].embedding.weight, model.prompt_encoder["phi"].embedding.weight)
    assert torch.equal(same.prompt_encoder["z"].embedding.weight, same.prompt_encoder["phi"].embedding.weight)
    peft_start = adapters.with_adapters(load_model(model_name, device="cpu")[0],
                                        AdapterConfig(peft="prefix", prefix_init="random"), ["phi"], seed=3)
    assert peft_start.prompt_encoder["phi"].embedding.weight.std().item() == pytest.approx(1.0, abs=0.1)
