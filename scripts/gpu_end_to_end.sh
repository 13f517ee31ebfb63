#!/usr/bin/env bash
# On the GPU with the real SmolLM2 (see scripts/gpu_setup.sh): issue 10's end-to-end runs on SST-2 at the
# paper's step counts, fp32, batch 16, evaluation every 500 steps on 500 validation examples, one run at
# a time, each timed whole (model load, zero-shot, training, evaluations, test).
# Usage: scripts/gpu_end_to_end.sh GRAPHS RUN...   GRAPHS = on | off | compiled (on, with --compile; inductor's
#        cache in /tmp is emptied before each run when COLD=1: its wall time includes every compile a first run pays);
#        RUN = fo | mezo | bilevel, or
#        RUN:STEPS for a shortened run (the eager comparison). Run folders go to /tmp/e2e (kept while the
#        machine is warm: a run cut by the call's limit resumes in the next call), wall times and the runs'
#        metrics to $OUT/end_to_end.jsonl, the run folders without weights to $OUT/e2e-<GRAPHS>.tgz.
source scripts/gpu_setup.sh
OUT=${OUT:-.}
graphs=$1; shift
case $graphs in
  compiled) mode="--graphs on --compile" ;;
  *) mode="--graphs $graphs" ;;
esac
cache=""  # compiled runs: whether inductor's cache (in /tmp) may hold the kernels when each run begins
[ $graphs = compiled ] && { [ "${COLD:-0}" = 1 ] && cache=-cold || cache=-warm; }
common="--task sst2 --dtype fp32 --device cuda --batch-size 16 --eval-every 500 --n-val 500 --no-save-model $mode --resume"
python3 -m zofo eval --task sst2 --n-test 10 > /dev/null 2>&1   # converts the bundled model once, untimed
for run in "$@"; do
  name=${run%%:*}; steps=${run#*:}; [ "$steps" = "$run" ] && steps=""
  case $name in
    fo) args="--method fo --peft lora --lr 1e-4 --steps ${steps:-5000}" ;;
    mezo) args="--method mezo --peft none --lr 1e-6 --steps ${steps:-10000}" ;;
    bilevel) args="--method bilevel --peft lora --lr 1e-6 --bilevel-lower-lr 1e-4 --bilevel-upper-lr 1e-4 --bilevel-k 10 --steps ${steps:-5000}" ;;
  esac
  folder=/tmp/e2e/$name-${steps:-full}-graphs-$graphs$cache
  [ "$cache" = -cold ] && rm -rf /tmp/torchinductor_$(whoami)
  begin=$EPOCHREALTIME
  python3 -m zofo train $common $args --out-dir $folder 2>&1 | grep -v "it/s\]" | tail -4
  end=$EPOCHREALTIME
  python3 - "$folder" "$begin" "$end" "$graphs$cache" "$run" >> $OUT/end_to_end.jsonl <<'EOF'
import json, sys
folder, begin, end, graphs, run = sys.argv[1:]
wall = float(end) - float(begin)
try:
    metrics = json.load(open(f"{folder}/metrics.json"))
except FileNotFoundError:
    metrics = {"unfinished": True}
keep = ("method", "peft", "best_step", "best_val_loss", "train_seconds", "test", "zero_shot", "test_seconds", "graphs")
print(json.dumps({"run": run, "graphs": graphs, "wall_seconds": round(float(wall), 1), **{k: metrics.get(k) for k in keep}}))
EOF
  tail -1 $OUT/end_to_end.jsonl
done
tar czf $OUT/e2e-$graphs.tgz --exclude=adapter --exclude=model --exclude=checkpoint.pt -C /tmp e2e
