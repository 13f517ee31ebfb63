#!/usr/bin/env bash
# On the GPU machine, after the setup calls (here: bash scripts/gpu_prepare.sh prints their `carry`; the last
# setup call may run this script at once): the next lease's work as results/README.md plans it ("Session 16"):
#   - Table 2's Bilevel-LoRA on CB (seeds 0-2, resumed) and RTE (seeds 0-2), and MeZO-LoRA on RTE, seed 2
#     (resumed) (configs/paper/table2-lora.yaml);
#   - tf32-check's Bilevel cell on SST-2 (resumed), which decides whether Bilevel runs in TF32
#     (configs/paper/tf32-check.yaml).
# --length-groups: the value that scripts/choose_length_groups.py's rule gives for the H200 measurement of session
# 16 (results/benchmarks/length_groups_h200.jsonl: 1), the same at every call, so that every call continues the
# same sweeps (gpu_sweep.sh knows a sweep by its arguments). CUDA_CHECKS=1 runs benchmarks/cuda_checks.py first
# (about 3 minutes: after a change to the engine; they passed at session 16's code, results/benchmarks/).
# Every call is the same command: it starts what is not running, waits until SWEEP_SECONDS (default 540) after
# its start or until every sweep has ended, and returns what is done in $OUT: tf32-check.tgz and
# paper-table2-lora.tgz, and paper-table2-mezo-full.tgz once the follow-up (below) has started, with the sweeps'
# logs in lease.txt.
# Afterwards, here, for each NAME.tgz (or its parts NAME.tgz.00, ...) that came back:
#   scripts/collect_runs.sh <files_at>/NAME.tgz
# The lease's last call: STOP_AT_END=1 bash scripts/gpu_next_lease.sh (every run checkpoints and stops; its wait
# is then 420 s, so that the runs' exit, up to 90 s, and the packing end within the call's 600).
# TABLE2 replaces the Table 2 selections, one sweep per line; TF32_CHECK tf32-check's (empty: none); FOLLOW_UP the
# work that starts once those end (below). Right after the last call, while the machine is warm:
# bash scripts/gpu_return_left.sh brings back the unfinished runs that did not fit in what that call returned.
set -u
OUT=${OUT:-/tmp/zofo/out}; mkdir -p "$OUT" /tmp/zofo
source scripts/gpu_setup.sh
if [ "${CUDA_CHECKS:-0}" = 1 ]; then
  python3 benchmarks/cuda_checks.py > "$OUT/cuda_checks.txt" 2>&1 || { tail -n 20 "$OUT/cuda_checks.txt"; exit 1; }
  tail -n 1 "$OUT/cuda_checks.txt"
fi
groups=$(python3 scripts/choose_length_groups.py results/benchmarks/length_groups_h200.jsonl --tasks cb,rte)
echo "length groups: $groups"
# On two GPUs: the first runs the longest work, Bilevel RTE (5,000 steps from the start) and MeZO-LoRA RTE (5,316 steps
# left), with no neighbours but each other; the second the Bilevel CB runs (1,832 steps left each) and the TF32
# cell, then FOLLOW_UP (below). On one GPU, all of it side by side.
if [ "$(nvidia-smi -L 2>/dev/null | wc -l)" -ge 2 ]; then first="--gpus 0"; second="--gpus 1"; else first=""; second=""; fi
TABLE2=${TABLE2:-"--only method=bilevel --only task=rte $first
--only method=mezo --only task=rte --only seed=2 $first
--only method=bilevel --only task=cb $second"}
start() { SWEEP_SECONDS=0 STOP_AT_END=0 bash scripts/gpu_sweep.sh "$@" > /dev/null; }
while read -r selection; do
  start configs/paper/table2-lora.yaml paper-table2-lora --parallel 6 --set length_groups=$groups $selection
done <<< "$TABLE2"
TF32_CHECK=${TF32_CHECK-"--only method=bilevel --only task=sst2"}  # empty: none
if [ -n "$TF32_CHECK" ]; then
  start configs/paper/tf32-check.yaml tf32-check $TF32_CHECK --set length_groups=$groups $second
fi
rm -f "$OUT"/*.tgz*  # what those calls packed at the start: packed again below
[ "${STOP_AT_END:-0}" = 1 ] && SWEEP_SECONDS=${SWEEP_SECONDS:-420}
running() {  # any sweep of these NAMEs (default: all) still running on the machine
  for pid in $(for name in "${@:-*}"; do ls /tmp/zofo/$name.sweeps/*.pid 2>/dev/null; done); do
    kill -0 "$(cat "$pid")" 2>/dev/null && return 0
  done
  return 1
}
running_on_second() {  # any sweep on the second GPU still running (on one GPU: any sweep)
  for pid in /tmp/zofo/*.sweeps/*.pid; do
    grep -q -e "$second" "${pid%.pid}.args" && kill -0 "$(cat "$pid")" 2>/dev/null && return 0
  done
  return 1
}
# Once the sweeps on its GPU have ended, that GPU takes the next work in issue 11's order, so that it does not idle:
# FOLLOW_UP (CONFIG NAME [sweep arguments]; empty: none), by default Table 2's MeZO on the full model (its tuning
# runs first), in plain fp32 as the TF32 rule asks until its fp32 seeds exist. It checkpoints and comes back like
# the others.
FOLLOW_UP=${FOLLOW_UP-"configs/paper/table2-mezo-full.yaml paper-table2-mezo-full --parallel 8"}
read -r follow_config follow_name follow_arguments <<< "$FOLLOW_UP"
deadline=${SWEEP_SECONDS:-540}
# not in a call's last 2 minutes: loading the model and capturing its graphs take about one
follow_up_waits() { [ -n "$FOLLOW_UP" ] && [ ! -f /tmp/zofo/$follow_name.started ] && [ $SECONDS -lt $((deadline - 120)) ]; }
while [ $SECONDS -lt $deadline ] && { running || follow_up_waits; }; do
  if follow_up_waits && ! running_on_second; then
    start $follow_config $follow_name $follow_arguments $second && touch /tmp/zofo/$follow_name.started
    rm -f "$OUT/$follow_name".tgz*  # packed again below
  fi
  sleep 5
done
# pack (STOP_AT_END=1 first stops every sweep on the machine): tf32-check's archive, then Table 2's and the
# follow-up's in the room each leaves (RETURN_MB, gpu_sweep.sh)
RETURN_ONLY=1 bash scripts/gpu_sweep.sh configs/paper/tf32-check.yaml tf32-check
RETURN_ONLY=1 STOP_AT_END=0 bash scripts/gpu_sweep.sh configs/paper/table2-lora.yaml paper-table2-lora
if [ -f "/tmp/zofo/$follow_name.started" ]; then
  RETURN_ONLY=1 STOP_AT_END=0 bash scripts/gpu_sweep.sh $follow_config $follow_name
fi
# one text file for the sweeps' logs (and cuda_checks.txt): a call returns at most 8 files, and three archives in
# 15 MB parts take up to 7 of them
for text in "$OUT"/*.log "$OUT"/*.txt; do
  if [ -f "$text" ]; then echo "== $(basename "$text")"; cat "$text"; echo; fi
done > /tmp/zofo/lease.txt
rm -f "$OUT"/*.log "$OUT"/*.txt && mv /tmp/zofo/lease.txt "$OUT/lease.txt"
