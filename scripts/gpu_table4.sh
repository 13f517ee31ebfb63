#!/usr/bin/env bash
# On the GPU with the real SmolLM2 (scripts/gpu_setup.sh) and MetaICL's data (carried once as
# .gpu/metaicl.tar.xz, unpacked into /tmp/zofo/data): the Table 4 sweep, tuning runs first, in
# /tmp/zofo/table4, where partial runs and their checkpoints stay while the machine is warm. The runs
# already collected here under results/table4/runs are copied in and skipped. $OUT gets an archive of the
# run folders without checkpoints or weights. Afterwards, here: scripts/collect_runs.sh <files_at>/runs.tgz
# Two calls in a row (64 MiB carried per call; .gpu/ is ignored: the wheel in a 40 MB and a 53 MB part):
#   1. carry [.gpu/a, .gpu/py, .gpu/metaicl.tar.xz]: mkdir -p /tmp/zofo && cp .gpu/a/part-aa /tmp/zofo/ &&
#      source scripts/gpu_setup.sh && mkdir -p /tmp/zofo/data && tar xJf .gpu/metaicl.tar.xz -C /tmp/zofo/data
#   2. at once, carry [.gpu/b]: SWEEP_SECONDS=540 bash scripts/gpu_table4.sh   (again while warm to continue)
# Extra arguments go to `zofo sweep`. On a machine of several GPUs (nvidia-h200-x2) the sweep spreads its runs
# over them, so give it more at once: SWEEP_SECONDS=540 bash scripts/gpu_table4.sh --parallel 10
source scripts/gpu_setup.sh
OUT=${OUT:-.}
if [ -f .gpu/metaicl.tar.xz ] && [ ! -d /tmp/zofo/data/metaicl ]; then
  mkdir -p /tmp/zofo/data && tar xJf .gpu/metaicl.tar.xz -C /tmp/zofo/data
fi
export ZOFO_DATA_DIR=/tmp/zofo/data OMP_NUM_THREADS=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
python3 -c "from zofo.models import load_model; load_model('smollm2-135m-instruct', 'fp32', 'cpu')"  # converted once, not by each run
mkdir -p /tmp/zofo/table4 && if [ -d results/table4/runs ]; then cp -rn results/table4/runs/. /tmp/zofo/table4/; fi
timeout ${SWEEP_SECONDS:-540} python3 -m zofo sweep ${SWEEP:-configs/paper/table4.yaml} --out-dir /tmp/zofo/table4 "$@" > $OUT/table4.log 2>&1
tail -c 3000 $OUT/table4.log | tr '\r' '\n' | tail -5
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv
tar czf $OUT/runs.tgz --exclude=checkpoint.pt --exclude=adapter --exclude=model \
    --transform 's,^tmp/zofo/table4,results/table4/runs,' /tmp/zofo/table4
