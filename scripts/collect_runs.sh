#!/usr/bin/env bash
# Here, after a GPU call of scripts/gpu_sweep.sh (or gpu_experiments.sh): copy the finished runs (those with metrics.json)
# from its archive into results/<sweep>/runs, so that the next call skips them, and rebuild the reports.
# Usage: scripts/collect_runs.sh PATH/NAME.tgz
set -euo pipefail
archive=${1:?usage: scripts/collect_runs.sh PATH/NAME.tgz}
staging=$(mktemp -d); trap 'rm -rf "$staging"' EXIT
tar xzf "$archive" -C "$staging" && find "$staging" -name .lock -delete  # a live run's lock, not a result
# finished runs at any depth (a sweep's tuning runs are in runs/tuning/), and the sweep's tuning.md
(cd "$staging" && find results -name metrics.json -o -name tuning.md) | while read -r found; do
  if [ "$(basename "$found")" = tuning.md ]; then cp "$staging/$found" "$found"; continue; fi
  run=$(dirname "$found")
  if [ ! -d "$run" ] || [ ! -f "$run/metrics.json" ]; then
    mkdir -p "$run" && cp -r "$staging/$run/." "$run/" && echo "new: $run"
  fi
done
for sweep in $(ls "$staging"/results); do
  PYTHONPATH=src python3 -m zofo report "results/$sweep/runs" --output "results/$sweep" | tail -1
done
