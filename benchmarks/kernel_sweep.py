"""Tuning sweep for the fused add-Gaussian kernel of zofo.zo.kernels: block size, Philox rounds and
warps, exact or approximate Box-Muller, timed on 2^27 bf16 elements against a plain read-modify-write
(run on a GPU). Two layouts: one parameter of 2^27 elements, and 2^27 elements cut into the parameter
shapes of OPT-1.3B's layers (the boundaries between parameters cost masked, partly empty groups)."""

import itertools
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from zofo.zo import kernels  # noqa: E402
from zofo.zo.kernels import Launch, _add_gaussian  # noqa: E402
from zofo.zo.space import name_key  # noqa: E402


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


def layer_pieces(n: int):
    """Pieces with OPT-1.3B's per-layer parameter sizes (4 attention matrices, 2 MLP matrices, biases and
    norms), repeated until n elements."""
    sizes = [2048 * 2048, 2048] * 4 + [8192 * 2048, 8192, 2048 * 8192, 2048, 2048, 2048, 2048, 2048]
    pieces, position, i = [], 0, 0
    while position < n:
        size = min(sizes[i % len(sizes)], n - position)
        pieces.append((position, name_key(f"p{i}"), 0, size))
        position, i = position + size, i + 1
    return pieces


QUICK = "--quick" in sys.argv[1:]  # only the library's setting (kernels.py), exact and approximate
x = torch.zeros(1 << 27, dtype=torch.bfloat16, device="cuda")
n = x.numel()
print("bandwidth floor (scale copy):", milliseconds(lambda: _scale[(triton.cdiv(n, 4096),)](x, n, 1.0, BLOCK=4096)), "ms per 2^27 bf16")
layouts = {"one parameter": [(0, name_key("w"), 0, n)], "OPT-1.3B layers": layer_pieces(n)}
grid = ([kernels.BLOCK], [kernels.ROUNDS], [kernels.WARPS]) if QUICK else ([512, 1024, 2048], [10, 7], [4, 8])
for (layout, pieces), fast, aligned, block, rounds, warps in itertools.product(layouts.items(), [False, True], [True, False], *grid):
    table = Launch.of(pieces, "cuda", block).table  # aligned: the bounds' alignment told to the compiler
    ms = milliseconds(lambda: _add_gaussian[(table.shape[0],)](x, table, 123, 1e-3, BLOCK=block, ROUNDS=rounds,
                                                                FAST_MATH=fast, ALIGNED=aligned, num_warps=warps))
    print(f"{layout}, {len(pieces)} pieces: fast_math {fast} aligned {aligned} BLOCK {block} rounds {rounds} "
          f"warps {warps}: {ms:.3f} ms per 2^27 bf16  (x10 = OPT-1.3B pass)")
