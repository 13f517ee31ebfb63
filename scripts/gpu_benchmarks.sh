#!/usr/bin/env bash
# On the GPU, no real weights needed: the fused kernel checked on CUDA and swept, the ZO step benchmark
# (random-init OPT-1.3B, bf16, both shapes) and the per-method step cost (Table 7, Figure 5).
OUT=${OUT:-results/benchmarks}; mkdir -p $OUT
export PYTHONPATH=$PWD/src
python3 - <<'PY'
import torch
from zofo.zo import ParameterSpace, SPSA, ZOSGD
lin = torch.nn.Linear(3000, 1000, device="cuda")
space = ParameterSpace(lin.named_parameters())
assert space.kernel == "triton", space.kernel
theta = torch.cat([v.clone() for _, _, v in space.chunks()])
u = torch.cat([space.direction(5, b, c, v.numel()) for b, c, v in space.chunks()])
space.add_direction(5, 0.25)
after = torch.cat([v.clone() for _, _, v in space.chunks()])
print("fused kernel on cuda: max |θ + 0.25u − fused| =", (theta + 0.25 * u - after).abs().max().item(),
      " u mean/std", u.mean().item(), u.std().item())
# The approximate Box-Muller against Triton's exact one: the same Philox bits, the angle shifted by π.
from zofo.zo import kernels
n = 1 << 24
exact = torch.empty(n, device="cuda")
kernels._gaussian[kernels._grid(n)](exact, n, 123, BLOCK=kernels.BLOCK, ROUNDS=kernels.ROUNDS, FAST_MATH=False, num_warps=kernels.WARPS)
fast = kernels.gaussian(n, 123, "cuda")
print(f"fast-math u vs exact (negated): max abs diff {(fast + exact).abs().max().item():.2e}, "
      f"mean {fast.mean().item():.4f}, std {fast.std().item():.4f}, kurtosis {(fast ** 4).mean().item():.3f}")
PY
python3 benchmarks/kernel_sweep.py | tee $OUT/kernel_sweep.txt
for shape in "16 256" "8 128"; do
  set -- $shape
  python3 benchmarks/zo_step.py --model opt-1.3b --dtype bf16 --batch $1 --length $2 --iters 20 --output $OUT/zo_step_gpu.jsonl
done
# Table 7 (step latency) and Figure 5 (memory): one step of each method, side by side.
python3 benchmarks/method_step.py configs/benchmarks/step_cost.yaml --output $OUT/method_step.jsonl
# the same at K = 30, the authors' usual K
python3 benchmarks/method_step.py configs/benchmarks/step_cost_k30.yaml --output $OUT/method_step.jsonl
