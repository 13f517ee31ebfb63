"""benchmarks/precision_check.py, the script that measures whether TF32 or bf16 changes a step's projected gradient
against fp32, run on the CPU with a tiny model (bf16 for TF32, which needs CUDA)."""

import subprocess
import sys

import pytest

from conftest import REPO, run_benchmark, tiny

from zofo.records import read_records

sys.path.insert(0, str(REPO / "benchmarks"))


def test_the_reference_is_exactly_repeatable(data_dir):
    """fp32 against itself is 0: θ ± εu is written from a copy of θ, so a second pass sees the same θ."""
    from precision_check import projected_gradients
    from zofo.config import make_config
    from zofo.data import prepare_task

    model, tokenizer = tiny()
    data = prepare_task(make_config({"task": "sst2", "model": "tiny-llama", "n_train": 4, "n_val": 1, "n_test": 1,
                                     "data_dir": str(data_dir)}), tokenizer)
    batch = [data.batch(data.train)]
    first, losses = projected_gradients(model, list(model.named_parameters()), batch, [1, 2, 3], eps=1e-3)
    again, _ = projected_gradients(model, list(model.named_parameters()), batch, [1, 2, 3], eps=1e-3)
    assert first == again and len(first) == 3 and len(set(first)) == 3 and len(losses) == 1


def test_bf16_against_fp32_is_measured_and_reported(tmp_path, data_dir):
    output = tmp_path / "precision.jsonl"
    result = run_benchmark("precision_check.py", "--model", "tiny-llama", "--device", "cpu", "--tasks", "sst2,rte",
                           "--modes", "fp32,bf16", "--batches", "1", "--batch-size", "4", "--directions", "3",
                           "--output", str(output), data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    rows = read_records(output)
    assert [(r["task"], r["mode"]) for r in rows] == [("sst2", "fp32-again"), ("sst2", "bf16"),
                                                      ("rte", "fp32-again"), ("rte", "bf16")]
    for row in rows[0::2]:  # the CPU repeats fp32 exactly: the comparison's floor is 0
        assert row["full"]["rel_rms"] == row["lora"]["rel_rms"] == row["loss_difference"] == 0
        assert row["gradient_cosine"] == pytest.approx(1.0, abs=1e-12)
    for row in rows[1::2]:
        assert row["directions"] == 3
        for target in ("full", "lora"):
            assert row[target]["rel_rms"] > 0 and row[target]["median_abs_g"] > 0  # bf16 rounds, g changes
            assert 0 <= row[target]["sign_agreement"] <= 1
        assert row["loss_difference"] > 0
        assert 0.99 < row["gradient_cosine"] <= 1.0 + 1e-6  # the first-order direction survives bf16
    assert "bf16 against fp32, ZO on full" in result.stdout


def test_tf32_needs_cuda_and_fp32_is_the_reference():
    script = [sys.executable, str(REPO / "benchmarks" / "precision_check.py"), "--device", "cpu"]
    for modes, message in (("fp32,tf32", "tf32 is a CUDA matmul mode"), ("bf16", "fp32 (the reference)")):
        result = subprocess.run(script + ["--modes", modes], capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and message in result.stderr
