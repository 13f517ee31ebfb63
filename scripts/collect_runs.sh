#!/usr/bin/env bash
# Here, after a GPU call of scripts/gpu_experiments.sh: copy the finished runs (those with metrics.json)
# from its archive into results/<sweep>/runs, so that the next call skips them, and rebuild the reports.
# Usage: scripts/collect_runs.sh PATH/runs.tgz
set -euo pipefail
archive=${1:?usage: scripts/collect_runs.sh PATH/runs.tgz}
staging=$(mktemp -d); trap 'rm -rf "$staging"' EXIT
tar xzf "$archive" -C "$staging"
for metrics in "$staging"/results/*/runs/*/metrics.json; do
  [ -e "$metrics" ] || continue
  run=$(dirname "$metrics"); sweep=$(basename "$(dirname "$(dirname "$run")")")
  target=results/$sweep/runs/$(basename "$run")
  if [ ! -d "$target" ]; then mkdir -p "results/$sweep/runs" && cp -r "$run" "$target" && echo "new: $target"; fi
done
for sweep in $(ls "$staging"/results); do
  PYTHONPATH=src python3 -m zofo report "results/$sweep/runs" --output "results/$sweep" | tail -1
done
