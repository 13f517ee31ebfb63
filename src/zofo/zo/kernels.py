"""Fused Triton kernels for the ZO passes on a GPU: θ += scale·u with u drawn in registers.

A pass over θ then reads and writes each weight once and nothing else (no u in memory, one launch per
bucket of parameters), which is the floor of a perturbation pass.

u is addressed by position, not by memory layout. Element e of a parameter takes output k of the
Philox4x32 block at counter (g·BLOCK + j, 0, 0, 0) under the key seed ⊕ h, where g = e // (4·BLOCK),
k = (e mod 4·BLOCK) // BLOCK, j = e mod BLOCK, seed is the step's and h a 64-bit hash of the parameter's
name. So u of a parameter is the same whatever bucket holds it, and a slice of it (a shard) draws exactly
its part: a launch takes a *program table*, one row per group of 4·BLOCK elements of some parameter:
(bucket position of the group's element 0, the valid range [lo, hi) in the bucket, the group's first
counter, the name's hash).

Set TRITON_INTERPRET=1 to run these kernels on the CPU (slowly), as the tests do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

BLOCK = 1024  # Philox counters per program; each gives 4 normals, so a program covers 4·BLOCK elements
GROUP = 4 * BLOCK
WARPS = 8
# Philox4x32-7 (Salmon et al. 2011: passes BigCrush); 10 rounds cost 18% more per pass on an H200
# (0.181 against 0.154 ms per 2^27 bf16 weights, benchmarks/kernel_sweep.py; the copy floor is 0.137).
ROUNDS = 7
# Box-Muller with the GPU's approximate log2/sin/cos units instead of the precise ones, which cost more
# than the memory traffic (0.291 ms a pass). Their error (at most 1.1e-4 against the exact draws,
# measured on an H200) does not matter for a random direction; the interpreter cannot run them, so it
# uses the exact transform.
FAST_MATH = os.environ.get("TRITON_INTERPRET") != "1"
TABLE_COLUMNS = 5
MAX_ELEMENTS = 4 << 32  # per parameter: the counter is one 32-bit word


@triton.jit
def _normal_pair(u1, u2, FAST_MATH: tl.constexpr):
    if FAST_MATH:
        # r = sqrt(-2 ln u1) = sqrt(-2 ln2 · log2 u1); the angle spans [-π, π), where sin.approx is accurate.
        r = tl.sqrt(-1.3862943611198906 * libdevice.fast_log2f(tl.maximum(1.0e-7, u1)))
        angle = 6.283185307179586 * (u2 - 0.5)
        return r * libdevice.fast_cosf(angle), r * libdevice.fast_sinf(angle)
    else:
        return tl.random.pair_uniform_to_normal(u1, u2)


@triton.jit
def _group_normals(table_ptr, seed, BLOCK: tl.constexpr, ROUNDS: tl.constexpr, FAST_MATH: tl.constexpr,
                   ALIGNED: tl.constexpr):
    """This program's group: its four blocks of normals, the group's position in the buffer and the valid
    range relative to it. Only the per-program scalars are 64-bit; per element everything is 32-bit."""
    row = table_ptr + tl.program_id(0) * 5
    position = tl.load(row)
    lo = tl.maximum(tl.load(row + 1) - position, 0).to(tl.int32)
    hi = tl.minimum(tl.load(row + 2) - position, 4 * BLOCK).to(tl.int32)
    if ALIGNED:  # every bound a multiple of 16 elements: accesses vectorise, as with a plain copy
        position, lo, hi = tl.multiple_of(position, 16), tl.multiple_of(lo, 16), tl.multiple_of(hi, 16)
    lane = tl.arange(0, BLOCK)
    c0 = tl.load(row + 3).to(tl.uint32) + lane.to(tl.uint32)
    zero = c0 * 0  # the other counter words are 0: the compiler folds Philox's first round, as in tl.randint4x
    key = seed ^ tl.load(row + 4)  # Philox's key: the step's seed and the parameter's name
    i0, i1, i2, i3 = tl.random.philox(key, c0, zero, zero, zero, ROUNDS)
    u0, u1 = _normal_pair(tl.random.uint_to_uniform_float(i0), tl.random.uint_to_uniform_float(i1), FAST_MATH)
    u2, u3 = _normal_pair(tl.random.uint_to_uniform_float(i2), tl.random.uint_to_uniform_float(i3), FAST_MATH)
    return u0, u1, u2, u3, position, lane, lo, hi


@triton.jit
def _add_block(x_ptr, offsets, lo, hi, scale, u):
    mask = (offsets >= lo) & (offsets < hi)
    x = tl.load(x_ptr + offsets, mask=mask)
    tl.store(x_ptr + offsets, (x.to(tl.float32) + scale * u).to(x.dtype), mask=mask)


@triton.jit(do_not_specialize=["seed"])
def _add_gaussian(x_ptr, table_ptr, seed, scale, BLOCK: tl.constexpr, ROUNDS: tl.constexpr, FAST_MATH: tl.constexpr,
                  ALIGNED: tl.constexpr):
    u0, u1, u2, u3, position, lane, lo, hi = _group_normals(table_ptr, seed, BLOCK, ROUNDS, FAST_MATH, ALIGNED)
    group_ptr = x_ptr + position
    _add_block(group_ptr, lane, lo, hi, scale, u0)
    _add_block(group_ptr, lane + BLOCK, lo, hi, scale, u1)
    _add_block(group_ptr, lane + 2 * BLOCK, lo, hi, scale, u2)
    _add_block(group_ptr, lane + 3 * BLOCK, lo, hi, scale, u3)


@triton.jit
def _from_origin_block(x_ptr, origin_ptr, offsets, lo, hi, scale, u, COMMIT: tl.constexpr):
    mask = (offsets >= lo) & (offsets < hi)
    origin = tl.load(origin_ptr + offsets, mask=mask)
    x = (origin.to(tl.float32) + scale * u).to(origin.dtype)
    tl.store(x_ptr + offsets, x, mask=mask)
    if COMMIT:
        tl.store(origin_ptr + offsets, x, mask=mask)


@triton.jit(do_not_specialize=["seed"])
def _add_gaussian_from(x_ptr, origin_ptr, table_ptr, seed, scale, COMMIT: tl.constexpr, BLOCK: tl.constexpr,
                       ROUNDS: tl.constexpr, FAST_MATH: tl.constexpr, ALIGNED: tl.constexpr):
    u0, u1, u2, u3, position, lane, lo, hi = _group_normals(table_ptr, seed, BLOCK, ROUNDS, FAST_MATH, ALIGNED)
    _from_origin_block(x_ptr + position, origin_ptr + position, lane, lo, hi, scale, u0, COMMIT)
    _from_origin_block(x_ptr + position, origin_ptr + position, lane + BLOCK, lo, hi, scale, u1, COMMIT)
    _from_origin_block(x_ptr + position, origin_ptr + position, lane + 2 * BLOCK, lo, hi, scale, u2, COMMIT)
    _from_origin_block(x_ptr + position, origin_ptr + position, lane + 3 * BLOCK, lo, hi, scale, u3, COMMIT)


@triton.jit
def _store_block(u_ptr, offsets, lo, hi, u):
    tl.store(u_ptr + offsets, u, mask=(offsets >= lo) & (offsets < hi))


@triton.jit(do_not_specialize=["seed"])
def _gaussian(u_ptr, table_ptr, seed, BLOCK: tl.constexpr, ROUNDS: tl.constexpr, FAST_MATH: tl.constexpr,
              ALIGNED: tl.constexpr):
    u0, u1, u2, u3, position, lane, lo, hi = _group_normals(table_ptr, seed, BLOCK, ROUNDS, FAST_MATH, ALIGNED)
    group_ptr = u_ptr + position
    _store_block(group_ptr, lane, lo, hi, u0)
    _store_block(group_ptr, lane + BLOCK, lo, hi, u1)
    _store_block(group_ptr, lane + 2 * BLOCK, lo, hi, u2)
    _store_block(group_ptr, lane + 3 * BLOCK, lo, hi, u3)


def program_table(pieces, device, block: int = BLOCK) -> torch.Tensor:
    """The launch table for pieces (position in the buffer, key, first element in the parameter, numel):
    one row per group of 4·block parameter elements that a piece touches."""
    rows, group = [], 4 * block
    for position, key, start, numel in pieces:
        if start + numel > MAX_ELEMENTS:
            raise ValueError(f"a parameter of more than {MAX_ELEMENTS} elements needs a wider Philox counter")
        groups = torch.arange(start // group, (start + numel - 1) // group + 1, dtype=torch.int64)
        table = torch.empty(len(groups), TABLE_COLUMNS, dtype=torch.int64)
        table[:, 0] = position + groups * group - start
        table[:, 1], table[:, 2] = position, position + numel
        table[:, 3] = groups * block
        table[:, 4] = key - (1 << 64) if key >= 1 << 63 else key  # the same 64 bits, as a signed int64
        rows.append(table)
    return torch.cat(rows).to(device)


@dataclass
class Launch:
    """A program table on the device, and whether all its bounds are multiples of 16 elements."""

    table: torch.Tensor
    aligned: bool

    @classmethod
    def of(cls, pieces, device, block: int = BLOCK) -> "Launch":
        aligned = all(position % 16 == 0 and start % 16 == 0 and numel % 16 == 0 for position, _, start, numel in pieces)
        return cls(program_table(pieces, device, block), aligned)


def add_gaussian_(x: torch.Tensor, launch: Launch, seed: int, scale: float) -> None:
    """x += scale·u(seed) over the pieces of the launch, in place; x contiguous and 1-D."""
    _add_gaussian[(launch.table.shape[0],)](x, launch.table, seed, scale, BLOCK=BLOCK, ROUNDS=ROUNDS,
                                            FAST_MATH=FAST_MATH, ALIGNED=launch.aligned, num_warps=WARPS)


def add_gaussian_from_(x: torch.Tensor, origin: torch.Tensor, launch: Launch, seed: int, scale: float,
                       commit: bool = False) -> None:
    """x = origin + scale·u(seed) over the pieces of the launch (and origin = x as well, with commit): one
    rounding from the origin, so that a perturbation never accumulates round-off."""
    _add_gaussian_from[(launch.table.shape[0],)](x, origin, launch.table, seed, scale, COMMIT=commit, BLOCK=BLOCK,
                                                 ROUNDS=ROUNDS, FAST_MATH=FAST_MATH, ALIGNED=launch.aligned,
                                                 num_warps=WARPS)


def gaussian_(u: torch.Tensor, launch: Launch, seed: int) -> torch.Tensor:
    """Writes u(seed) into the fp32 buffer u at the pieces of the launch: the numbers add_gaussian_ adds."""
    _gaussian[(launch.table.shape[0],)](u, launch.table, seed, BLOCK=BLOCK, ROUNDS=ROUNDS, FAST_MATH=FAST_MATH,
                                        ALIGNED=launch.aligned, num_warps=WARPS)
    return u
