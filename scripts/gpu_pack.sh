#!/usr/bin/env bash
# On the GPU machine: pack the run folders (and files) that LIST names, relative to /tmp/zofo/, as
# results/NAME/runs/... in ARCHIVE, without weights (adapter/, model/), locks or half-written files, leaving out
# the paths EXCLUDED names (tar -X); over 15 MB, in parts ARCHIVE.00, .01, ... (a call returns at most 16 MiB a
# file). scripts/collect_runs.sh reads either form. Used by gpu_sweep.sh and gpu_return_left.sh.
# Usage: bash scripts/gpu_pack.sh NAME LIST ARCHIVE [EXCLUDED]
set -euo pipefail
name=$1 list=$2 archive=$3 excluded=${4:-/dev/null}
# (tar says "file changed as we read it" of a running run's log: the next call brings it again)
tar czf "$archive" -C /tmp/zofo --exclude=.lock --exclude='.*.tmp' --exclude=adapter --exclude=model \
    --no-wildcards -X "$excluded" --transform "s,^$name,results/$name/runs," -T "$list" || [ $? = 1 ]
if [ "$(stat -c %s "$archive")" -gt 15000000 ]; then
  split -b 15000000 -d "$archive" "$archive." && rm "$archive"
fi
