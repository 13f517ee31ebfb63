#!/usr/bin/env bash
# Zero-shot with/without the hard prompt and first-order LoRA on SST-2 and COPA, SmolLM2-135M,
# several runs side by side on one GPU. Writes run folders under $RUNS.
source scripts/gpu_setup.sh
RUNS=/tmp/runs; mkdir -p $RUNS; OUT=${OUT:-.}
python3 -m zofo eval --task copa --n-test 10 > /dev/null 2>&1   # converts the bundled model once
for task in sst2 copa; do
  python3 -m zofo eval --task $task --no-hard-prompt --output $RUNS/zeroshot-$task-noprompt.json 2>/dev/null | tail -1 &
  for lr in 1e-4 5e-4; do
    python3 -m zofo train --task $task --method fo --peft lora --steps 1000 --batch-size 16 --lr $lr \
      --eval-every 100 --out-dir $RUNS/$task-fo-lora-lr$lr > $RUNS/$task-fo-lora-lr$lr.out 2>&1 &
  done
done
wait
for f in $RUNS/*.out; do echo "== $f"; tr '\r' '\n' < $f | grep -E "^zero-shot|^test at|^\{" ; done
# $OUT brings back only a few files: one archive of every run folder (adapters included).
tar czf $OUT/runs.tgz -C $RUNS .
