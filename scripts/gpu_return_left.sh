#!/usr/bin/env bash
# On the GPU machine, in the call right after a lease's last one (STOP_AT_END=1), while the machine is still warm
# (it goes back 30 s after a call): the unfinished runs that gpu_sweep.sh left behind for lack of room in what a
# call returns (/tmp/zofo/NAME.left-behind), with their checkpoints, so that they resume on the next machine
# instead of starting again. Session 16's last call left one Bilevel run of 3,168 steps behind this way.
# $OUT gets NAME.left.tgz for each NAME (in parts .00, .01, ... over 15 MB), up to RETURN_MB (default 60) in
# all, the runs that save the most steps per byte first, whichever NAME; what does not fit stays listed in
# NAME.left-behind for one more call of this script.
# Afterwards, here: bash scripts/collect_lease.sh <files_at> (each NAME.left.tgz, by collect_runs.sh).
# Usage: bash scripts/gpu_return_left.sh
set -euo pipefail
OUT=${OUT:-/tmp/zofo/out}; mkdir -p "$OUT"
# the runs left behind that have a checkpoint (a list also names files of runs without one: nothing to resume),
# every sweep's together, and one plan for them (scripts/return_plan.py): the most steps saved per byte first
waiting=$(mktemp); staying=$(mktemp)
for list in /tmp/zofo/*.left-behind; do
  [ -s "$list" ] || continue
  while read -r run; do if [ -f "/tmp/zofo/$run/checkpoint.pt" ]; then echo "$run"; fi; done < "$list"
done > "$waiting"
python3 scripts/return_plan.py /tmp/zofo "$waiting" --budget-mb "${RETURN_MB:-60}" --less-what-is-in "$OUT" > "$staying"
for list in /tmp/zofo/*.left-behind; do
  [ -s "$list" ] || continue
  name=$(basename "$list" .left-behind)
  sent=$(mktemp)
  awk -v sweep="$name/" 'index($0, sweep) == 1' "$waiting" | grep -vxF -f "$staying" > "$sent" || true
  awk -v sweep="$name/" 'index($0, sweep) == 1' "$staying" > "$list"
  if [ -s "$sent" ]; then bash scripts/gpu_pack.sh "$name" "$sent" "$OUT/$name.left.tgz"; fi
  echo "$name: $(wc -l < "$sent") left-behind run(s) packed$([ -s "$list" ] && echo ", $(wc -l < "$list") still behind: call again")"
  rm -f "$sent"
done
rm -f "$waiting" "$staying"
