"""Fused Triton kernels for the ZO passes on a GPU: θ += scale·u with u drawn in registers.

A pass over θ then reads and writes each weight once and nothing else (no u in memory, one
launch per bucket), which is the floor of a perturbation pass. u comes from Triton's counter-based
Philox generator, tl.randn(seed, offset), so any slice can be regenerated alone.
Set TRITON_INTERPRET=1 to run these kernels on the CPU (slowly), as the tests do.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 4096


@triton.jit
def _add_gaussian(x_ptr, n, seed, scale, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    u = tl.randn(seed, offsets)
    x = tl.load(x_ptr + offsets, mask=mask)
    tl.store(x_ptr + offsets, (x.to(tl.float32) + scale * u).to(x.dtype), mask=mask)


@triton.jit
def _gaussian(u_ptr, n, seed, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    tl.store(u_ptr + offsets, tl.randn(seed, offsets), mask=offsets < n)


def add_gaussian_(x: torch.Tensor, seed: int, scale: float) -> None:
    """x += scale·u(seed), in place; x contiguous and 1-D."""
    _add_gaussian[(triton.cdiv(x.numel(), BLOCK),)](x, x.numel(), seed, scale, BLOCK=BLOCK)


def gaussian(numel: int, seed: int, device) -> torch.Tensor:
    """u(seed) as an fp32 tensor: the same numbers add_gaussian_ adds."""
    u = torch.empty(numel, dtype=torch.float32, device=device)
    _gaussian[(triton.cdiv(numel, BLOCK),)](u, numel, seed, BLOCK=BLOCK)
    return u
