import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():  # the fused Triton kernels then run in Triton's CPU interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

from zofo.models import load_model

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("ZOFO_DATA_DIR", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    assert DATA_DIR.is_dir(), f"task data not found at {DATA_DIR}; set ZOFO_DATA_DIR"
    return DATA_DIR


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(2)


def tiny(name: str = "tiny-llama", seed: int = 0, dtype: str = "fp32"):
    """A fresh two-layer random model and its byte-level tokenizer, on the CPU."""
    return load_model(name, dtype=dtype, device="cpu", seed=seed)


def run_benchmark(script: str, *args: str, data_dir: Path):
    """benchmarks/<script> with `args` in a process of its own, reading the task data from data_dir."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "ZOFO_DATA_DIR": str(data_dir), "PYTHONWARNINGS": "ignore"})
