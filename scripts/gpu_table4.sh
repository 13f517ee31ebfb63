#!/usr/bin/env bash
# On the GPU with the real SmolLM2 (scripts/gpu_setup.sh) and MetaICL's data (carried once as
# .gpu/metaicl.tar.xz, unpacked into /tmp/zofo/data): the Table 4 sweep, tuning runs first, in
# /tmp/zofo/table4 by scripts/gpu_sweep.sh (which says what it keeps and returns).
# Afterwards, here: scripts/collect_runs.sh <files_at>/table4.tgz
# Setup calls in a row (64 MiB carried per call with the repository; .gpu/ is ignored; see gpu_setup.sh), as
# `bash scripts/gpu_prepare.sh --metaicl` prints them, each `source scripts/gpu_setup.sh` (the data is unpacked once);
# the last one also runs: SWEEP_SECONDS=540 bash scripts/gpu_table4.sh   (again while warm to continue)
# Extra arguments go to `zofo sweep`. On a machine of several GPUs (nvidia-h200-x2) the sweep spreads its runs
# over them, so give it more at once: SWEEP_SECONDS=540 bash scripts/gpu_table4.sh --parallel 10
ZOFO_DATA_DIR=/tmp/zofo/data bash scripts/gpu_sweep.sh ${SWEEP:-configs/paper/table4.yaml} table4 "$@"
