#!/usr/bin/env bash
# On the GPU with the real SmolLM2 (see scripts/gpu_setup.sh): the reduced Table 1 and Table 2 (LoRA)
# sweeps side by side, their reports, and one archive of the run folders (no weights) in $OUT.
source scripts/gpu_setup.sh
RUNS=/tmp/runs; mkdir -p $RUNS; OUT=${OUT:-.}
python3 -m zofo eval --task copa --n-test 10 > /dev/null 2>&1   # converts the bundled model once
for sweep in table1 table2-lora; do
  timeout ${SWEEP_SECONDS:-500} python3 -m zofo sweep configs/reduced/$sweep.yaml --out-dir $RUNS/$sweep > $RUNS/$sweep.log 2>&1 &
done
wait
for sweep in table1 table2-lora; do
  tail -2 $RUNS/$sweep.log
  python3 -m zofo report $RUNS/$sweep --output $RUNS/$sweep/report 2>&1 | tail -30
done
tar czf $OUT/runs.tgz --exclude=adapter --exclude=model -C $RUNS .
