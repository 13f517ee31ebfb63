#!/usr/bin/env bash
# Here, after a GPU call of scripts/gpu_next_lease.sh or gpu_return_left.sh: collect all that it returned, by
# scripts/collect_runs.sh one archive at a time: NAME.tgz, its parts NAME.tgz.00, ..., NAME.left.tgz, and the
# bundle lease.tar.00, ... into which gpu_next_lease.sh puts the archives when they would be more files than a
# call returns (8).
# Usage: bash scripts/collect_lease.sh FILES_AT      (the folder the device tool names files_at)
set -euo pipefail
from=$(realpath "${1:?usage: scripts/collect_lease.sh FILES_AT}")
cd "$(dirname "$0")/.."
bundle=$(mktemp -d); trap 'rm -rf "$bundle"' EXIT
collected=$bundle/collected.txt && : > "$collected"
if compgen -G "$from/lease.tar.[0-9][0-9]" > /dev/null; then
  cat "$from"/lease.tar.[0-9][0-9] | tar x -C "$bundle"
fi
# a side-by-side measurement of --length-groups (gpu_next_lease.sh with LENGTH_GROUPS_CHECK=1; its printout and the
# value chosen are in lease.txt) is kept with the other benchmarks
if [ -f "$from/length_groups_side_by_side.jsonl" ]; then
  cp "$from/length_groups_side_by_side.jsonl" results/benchmarks/length_groups_side_by_side_h200.jsonl
  echo "new: results/benchmarks/length_groups_side_by_side_h200.jsonl"
fi
failed=()
for folder in "$from" "$bundle"; do
  for archive in "$folder"/*.tgz "$folder"/*.tgz.00; do
    [ -e "$archive" ] || continue
    echo "== $(basename "${archive%.00}")"
    bash scripts/collect_runs.sh "${archive%.00}" | tee -a "$collected" ||
      failed+=("$(basename "${archive%.00}")")  # the others still
  done
done
# the steps this call ran, from the runs' own records (collect_runs.sh's `steps: RUN FROM TO STATE` lines), summed
# by sweep, tuning run or not, state, method, PEFT and task
awk '$1 == "steps:" && $4 > $3 {
  n = split($2, path, "/"); key = path[2] ($2 ~ /\/runs\/tuning\// ? " tuning" : "") " " $5
  for (i = 1; i <= split(path[n], fields, ","); i++) if (fields[i] ~ /^(method|peft|task)=/) key = key " " fields[i]
  runs[key]++; steps[key] += $4 - $3; all += $4 - $3
} END {
  for (key in runs) printf "steps: %s: %d in %d run(s)\n", key, steps[key], runs[key] | "sort"
  close("sort"); printf "steps: %d in all\n", all
}' "$collected"
if [ ${#failed[@]} -gt 0 ]; then echo "collect_lease: not collected (see above): ${failed[*]}" >&2; exit 1; fi
