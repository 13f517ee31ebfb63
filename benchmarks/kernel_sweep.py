"""Tuning sweep for the fused add-Gaussian kernel of zofo.zo.kernels: block size, Philox rounds and
warps, exact or approximate Box-Muller, timed on one 2^27-element bf16 tensor against a plain read-modify-write (run on a GPU)."""

import itertools
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from zofo.zo.kernels import _add_gaussian  # noqa: E402


@triton.jit
def _scale(x_ptr, n, scale, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    x = tl.load(x_ptr + offsets, mask=mask)
    tl.store(x_ptr + offsets, (x.to(tl.float32) * scale).to(x.dtype), mask=mask)


def milliseconds(fn, reps=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


x = torch.zeros(1 << 27, dtype=torch.bfloat16, device="cuda")
n = x.numel()
print("bandwidth floor (scale copy):", milliseconds(lambda: _scale[(triton.cdiv(n, 4096),)](x, n, 1.0, BLOCK=4096)), "ms per 2^27 bf16")
for fast, block, rounds, warps in itertools.product([False, True], [512, 1024, 2048], [10, 7], [4, 8]):
    ms = milliseconds(lambda: _add_gaussian[(triton.cdiv(n, 4 * block),)](
        x, n, 123, 1e-3, BLOCK=block, ROUNDS=rounds, FAST_MATH=fast, num_warps=warps))
    print(f"fast_math {fast} BLOCK {block} rounds {rounds} warps {warps}: {ms:.3f} ms per 2^27 bf16  (x10 = OPT-1.3B pass)")
