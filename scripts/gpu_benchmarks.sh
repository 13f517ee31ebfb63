#!/usr/bin/env bash
# On the GPU, no real weights needed (carry .gpu/py): the engine's checks on CUDA, the fused kernel's
# tuning sweep, the ZO step benchmark (random-init OPT-1.3B, bf16, both shapes) and the per-method step
# cost (Table 7, Figure 5). QUICK=1 runs the production kernel setting only and the quick step-cost config.
source scripts/gpu_setup.sh
OUT=${OUT:-results/benchmarks}; mkdir -p $OUT
python3 benchmarks/cuda_checks.py | tee $OUT/cuda_checks.txt
python3 benchmarks/graphs.py --output $OUT/graphs.jsonl | tee $OUT/graphs.txt
python3 benchmarks/kernel_sweep.py ${QUICK:+--quick} | tee $OUT/kernel_sweep.txt
for shape in "16 256" "8 128"; do
  set -- $shape
  python3 benchmarks/zo_step.py --model opt-1.3b --dtype bf16 --batch $1 --length $2 --iters 20 --output $OUT/zo_step_gpu.jsonl
done
if [ -n "$QUICK" ]; then
  python3 benchmarks/method_step.py configs/benchmarks/step_cost_quick.yaml --output $OUT/method_step.jsonl
else
  python3 benchmarks/method_step.py configs/benchmarks/step_cost.yaml --output $OUT/method_step.jsonl
  python3 benchmarks/method_step.py configs/benchmarks/step_cost_k30.yaml --output $OUT/method_step.jsonl
fi
