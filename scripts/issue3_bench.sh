#!/usr/bin/env bash
# On the GPU: the ZO step benchmark (random-init OPT-1.3B, bf16) and a check of the fused kernel on CUDA.
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
PY
for shape in "16 256" "8 128"; do
  set -- $shape
  python3 benchmarks/zo_step.py --model opt-1.3b --dtype bf16 --batch $1 --length $2 --iters 20 --output $OUT/zo_step_gpu.jsonl
done
