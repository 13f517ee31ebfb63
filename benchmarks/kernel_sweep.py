"""Tuning sweep for the fused add-Gaussian kernel: block size, Philox rounds, warps (run on a GPU)."""
import torch, triton, triton.language as tl, itertools, statistics
@triton.jit
def _blk(x_ptr, offsets, n, scale, u):
    mask = offsets < n
    x = tl.load(x_ptr + offsets, mask=mask)
    tl.store(x_ptr + offsets, (x.to(tl.float32) + scale * u).to(x.dtype), mask=mask)
@triton.jit
def k4(x_ptr, n, seed, scale, BLOCK: tl.constexpr, ROUNDS: tl.constexpr):
    pid = tl.program_id(0); lane = tl.arange(0, BLOCK)
    u0, u1, u2, u3 = tl.randn4x(seed, pid * BLOCK + lane, ROUNDS)
    base = pid * 4 * BLOCK + lane
    _blk(x_ptr, base, n, scale, u0); _blk(x_ptr, base + BLOCK, n, scale, u1)
    _blk(x_ptr, base + 2*BLOCK, n, scale, u2); _blk(x_ptr, base + 3*BLOCK, n, scale, u3)
@triton.jit
def copyk(x_ptr, n, scale, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK); m = offs < n
    x = tl.load(x_ptr + offs, mask=m); tl.store(x_ptr + offs, (x.to(tl.float32) * scale).to(x.dtype), mask=m)
x = torch.zeros(1 << 27, dtype=torch.bfloat16, device="cuda")
def t(fn, reps=20):
    for _ in range(3): fn()
    torch.cuda.synchronize(); s=torch.cuda.Event(True); e=torch.cuda.Event(True); s.record()
    for _ in range(reps): fn()
    e.record(); torch.cuda.synchronize(); return s.elapsed_time(e)/reps
n = x.numel()
print("bandwidth floor (scale copy):", t(lambda: copyk[(triton.cdiv(n, 4096),)](x, n, 1.0, BLOCK=4096)), "ms per 2^27 bf16")
for B, R, W in itertools.product([256, 512, 1024, 2048], [10, 7], [4, 8]):
    ms = t(lambda: k4[(triton.cdiv(n, 4*B),)](x, n, 123, 1e-3, BLOCK=B, ROUNDS=R, num_warps=W))
    print(f"BLOCK {B} rounds {R} warps {W}: {ms:.3f} ms per 2^27 bf16  (x10 = OPT-1.3B pass)")
