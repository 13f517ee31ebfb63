"""Fused Triton kernels for the ZO passes on a GPU: θ += scale·u with u drawn in registers.

A pass over θ then reads and writes each weight once and nothing else (no u in memory, one
launch per bucket), which is the floor of a perturbation pass. u comes from Triton's counter-based
Philox generator (tl.randint4x(seed, offset)), so any slice can be regenerated alone.
Set TRITON_INTERPRET=1 to run these kernels on the CPU (slowly), as the tests do.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

BLOCK = 1024  # Philox counters per program; each gives 4 normals, so a program covers 4·BLOCK elements
WARPS = 8
# Philox4x32-7 (Salmon et al. 2011: passes BigCrush); 10 rounds cost 18% more per pass on an H200
# (0.181 against 0.154 ms per 2^27 bf16 weights, benchmarks/kernel_sweep.py; the copy floor is 0.137).
ROUNDS = 7
# Box-Muller with the GPU's approximate log2/sin/cos units instead of the precise ones tl.randn uses,
# which cost more than the memory traffic (0.291 ms a pass). Their error (at most 1.1e-4 against the
# exact draws, measured on an H200) does not matter for a random direction; the interpreter cannot run
# them, so it uses Triton's exact tl.randn4x.
FAST_MATH = os.environ.get("TRITON_INTERPRET") != "1"


@triton.jit
def _randn4x(seed, offsets, ROUNDS: tl.constexpr, FAST_MATH: tl.constexpr):
    if FAST_MATH:
        i0, i1, i2, i3 = tl.randint4x(seed, offsets, ROUNDS)
        a0, a1 = _normal_pair(tl.random.uint_to_uniform_float(i0), tl.random.uint_to_uniform_float(i1))
        a2, a3 = _normal_pair(tl.random.uint_to_uniform_float(i2), tl.random.uint_to_uniform_float(i3))
        return a0, a1, a2, a3
    else:
        return tl.randn4x(seed, offsets, ROUNDS)


@triton.jit
def _normal_pair(u1, u2):
    # r = sqrt(-2 ln u1) = sqrt(-2 ln2 · log2 u1); the angle spans [-π, π), where sin.approx is accurate.
    r = tl.sqrt(-1.3862943611198906 * libdevice.fast_log2f(tl.maximum(1.0e-7, u1)))
    angle = 6.283185307179586 * (u2 - 0.5)
    return r * libdevice.fast_cosf(angle), r * libdevice.fast_sinf(angle)


@triton.jit
def _add_block(x_ptr, offsets, n, scale, u):
    mask = offsets < n
    x = tl.load(x_ptr + offsets, mask=mask)
    tl.store(x_ptr + offsets, (x.to(tl.float32) + scale * u).to(x.dtype), mask=mask)


@triton.jit
def _add_gaussian(x_ptr, n, seed, scale, BLOCK: tl.constexpr, ROUNDS: tl.constexpr, FAST_MATH: tl.constexpr):
    # One Philox call yields four normals (randn4x): element pid·4B + k·B + j takes output k of
    # counter pid·B + j. Four times fewer Philox rounds than tl.randn per element, and coalesced.
    pid = tl.program_id(0)
    lane = tl.arange(0, BLOCK)
    u0, u1, u2, u3 = _randn4x(seed, pid * BLOCK + lane, ROUNDS, FAST_MATH)
    base = pid * 4 * BLOCK + lane
    _add_block(x_ptr, base, n, scale, u0)
    _add_block(x_ptr, base + BLOCK, n, scale, u1)
    _add_block(x_ptr, base + 2 * BLOCK, n, scale, u2)
    _add_block(x_ptr, base + 3 * BLOCK, n, scale, u3)


@triton.jit
def _gaussian(u_ptr, n, seed, BLOCK: tl.constexpr, ROUNDS: tl.constexpr, FAST_MATH: tl.constexpr):
    pid = tl.program_id(0)
    lane = tl.arange(0, BLOCK)
    u0, u1, u2, u3 = _randn4x(seed, pid * BLOCK + lane, ROUNDS, FAST_MATH)
    base = pid * 4 * BLOCK + lane
    tl.store(u_ptr + base, u0, mask=base < n)
    tl.store(u_ptr + base + BLOCK, u1, mask=base + BLOCK < n)
    tl.store(u_ptr + base + 2 * BLOCK, u2, mask=base + 2 * BLOCK < n)
    tl.store(u_ptr + base + 3 * BLOCK, u3, mask=base + 3 * BLOCK < n)


def _grid(numel: int) -> tuple[int]:
    if numel >= 1 << 31:
        raise ValueError("a chunk must have fewer than 2**31 elements (int32 offsets)")
    return (triton.cdiv(numel, 4 * BLOCK),)


def add_gaussian_(x: torch.Tensor, seed: int, scale: float) -> None:
    """x += scale·u(seed), in place; x contiguous and 1-D."""
    _add_gaussian[_grid(x.numel())](x, x.numel(), seed, scale, BLOCK=BLOCK, ROUNDS=ROUNDS, FAST_MATH=FAST_MATH, num_warps=WARPS)


def gaussian(numel: int, seed: int, device) -> torch.Tensor:
    """u(seed) as an fp32 tensor: the same numbers add_gaussian_ adds."""
    u = torch.empty(numel, dtype=torch.float32, device=device)
    _gaussian[_grid(numel)](u, numel, seed, BLOCK=BLOCK, ROUNDS=ROUNDS, FAST_MATH=FAST_MATH, num_warps=WARPS)
    return u
