#!/usr/bin/env bash
# On the GPU with the real SmolLM2 (see scripts/gpu_setup.sh): the reduced Table 1 and Table 2 (LoRA)
# sweeps side by side, into results/<sweep>/runs of this copy of the tree so that the runs already
# committed there are skipped; their reports, and one archive of the run folders (no weights) in $OUT.
# Afterwards, here: scripts/collect_runs.sh <files_at>/runs.tgz, before the next call, or it reruns them.
source scripts/gpu_setup.sh
OUT=${OUT:-.}
export OMP_NUM_THREADS=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True  # many processes share 16 cores and one GPU
python3 -m zofo eval --task copa --n-test 10 > /dev/null 2>&1   # converts the bundled model once
timeout ${SWEEP_SECONDS:-540} python3 -m zofo sweep configs/reduced/table1.yaml --out-dir results/table1/runs --parallel 4 > $OUT/table1.log 2>&1 &
timeout ${SWEEP_SECONDS:-540} python3 -m zofo sweep configs/reduced/table2-lora.yaml --out-dir results/table2-lora/runs --parallel ${TABLE2_PARALLEL:-14} > $OUT/table2-lora.log 2>&1 &
wait
for sweep in table1 table2-lora; do
  tail -3 $OUT/$sweep.log
  python3 -m zofo report results/$sweep/runs --output /tmp/report-$sweep 2>&1 | tail -30
done
tar czf $OUT/runs.tgz --exclude=adapter --exclude=model results/table1/runs results/table2-lora/runs
