import os
from pathlib import Path

# `make test` runs the tests in one process per core (pytest-xdist): each gets its share of the cores as torch
# threads, and so do the runs a test starts in a subprocess (the resume tests compare such a run with one in the
# test's own process, bit for bit, and a sum split over another number of threads rounds otherwise).
THREADS = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
os.environ["OMP_NUM_THREADS"] = str(THREADS)

import pytest  # noqa: E402  (torch reads OMP_NUM_THREADS when it is imported)
import torch  # noqa: E402

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
def _threads():
    torch.set_num_threads(THREADS)  # again: a test may have changed it


def tiny(name: str = "tiny-llama", seed: int = 0, dtype: str = "fp32"):
    """A fresh two-layer random model and its byte-level tokenizer, on the CPU."""
    return load_model(name, dtype=dtype, device="cpu", seed=seed)


def run_benchmark(script: str, *args: str, data_dir: Path):
    """benchmarks/<script> with `args` in a process of its own, reading the task data from data_dir."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "ZOFO_DATA_DIR": str(data_dir), "PYTHONWARNINGS": "ignore"})
