#!/usr/bin/env bash
# On the GPU machine, in the call right after a lease's last one (STOP_AT_END=1), while the machine is still warm
# (it goes back 30 s after a call): the unfinished runs that gpu_sweep.sh left behind for lack of room in what a
# call returns (/tmp/zofo/NAME.left-behind), with their checkpoints, so that they resume on the next machine
# instead of starting again. Session 16's last call left one Bilevel run of 3,168 steps behind this way.
# $OUT gets NAME.left.tgz for each NAME (in parts .00, .01, ... over 15 MB), up to RETURN_MB (default 60) in
# all; what does not fit stays listed in NAME.left-behind for one more call of this script.
# Afterwards, here: bash scripts/collect_lease.sh <files_at> (each NAME.left.tgz, by collect_runs.sh).
# Usage: bash scripts/gpu_return_left.sh
set -euo pipefail
OUT=${OUT:-/tmp/zofo/out}; mkdir -p "$OUT"
room=$(( ${RETURN_MB:-60} * 1000000 - $(du -sb "$OUT" | cut -f1) ))
for list in /tmp/zofo/*.left-behind; do
  [ -s "$list" ] || continue
  name=$(basename "$list" .left-behind)
  sent=$(mktemp); kept=$(mktemp)
  while read -r run; do  # paths relative to /tmp/zofo, as gpu_sweep.sh's tar -X read them
    # only runs with a checkpoint: the list also names the files of runs that have none (nothing to resume)
    if [ ! -f "/tmp/zofo/$run/checkpoint.pt" ]; then continue; fi
    bytes=$(du -sb --exclude=adapter --exclude=model "/tmp/zofo/$run" | cut -f1)
    if [ "$bytes" -le "$room" ]; then echo "$run" >> "$sent"; room=$((room - bytes)); else echo "$run" >> "$kept"; fi
  done < "$list"
  if [ -s "$sent" ]; then bash scripts/gpu_pack.sh "$name" "$sent" "$OUT/$name.left.tgz"; fi
  echo "$name: $(wc -l < "$sent") left-behind run(s) packed$([ -s "$kept" ] && echo ", $(wc -l < "$kept") still behind: call again")"
  mv "$kept" "$list"; rm -f "$sent"
done
