#!/usr/bin/env bash
# Here, after a GPU call of scripts/gpu_sweep.sh (or gpu_experiments.sh): copy the finished runs (those with
# metrics.json) from its archive into results/<sweep>/runs, so that the next call skips them, and rebuild the
# reports. Unfinished runs that came back with their checkpoint (gpu_sweep.sh returns the small ones: MeZO's
# hold no weights, a MeZO-prefix run at step 2,000 is 0.1 MB gzipped) go to results/partial/<sweep>/, newest
# replacing older, their records gzipped. Tracked by git: committed, they outlive this checkout (session 22's and
# session 31's 16 part-way runs, kept in an ignored folder and a local branch, were lost with theirs) and travel
# with every GPU call, where scripts/gpu_setup.sh puts them back for the sweep that resumes them. A partial run's
# size is printed: every call carries them all beside the repository, within 64 MiB.
# Usage: scripts/collect_runs.sh PATH/NAME.tgz   (or the parts PATH/NAME.tgz.00, .01, ... given as PATH/NAME.tgz)
set -euo pipefail
archive=${1:?usage: scripts/collect_runs.sh PATH/NAME.tgz}
staging=$(mktemp -d); trap 'rm -rf "$staging" "$staging.tgz"' EXIT
partial_folder() {  # results/NAME/runs/RUN -> results/partial/NAME/RUN (RUN may be tuning/...)
  local inside=${1#results/}
  echo "results/partial/${inside%%/*}/${inside#*/runs/}"
}
reached() (  # the step a run folder holds: a finished run's last record, else its checkpoint's: read from
  # checkpoint.pt where torch can (it is written at evaluations, every checkpoint_every steps and at SIGTERM), else
  # its last evaluation (a record with val_loss) or the step output.log says SIGTERM checkpointed; 0 if none
  set +o pipefail  # a file that is not there is one place fewer to look, not a failure
  run=$1
  if [ ! -f "$run/metrics.json" ] && [ -f "$run/checkpoint.pt" ] && python3 -c 'import sys, torch
print(torch.load(sys.argv[1], weights_only=True, map_location="cpu")["step"])' "$run/checkpoint.pt" 2>/dev/null; then
    return 0
  fi
  if [ -f "$run/metrics.json" ]; then pattern='"step": [0-9]*'; else pattern='"step": [0-9]*, "val_loss"'; fi
  { cat "$run/log.jsonl" "$run/output.log"; zcat "$run/log.jsonl.gz" "$run/output.log.gz"; } 2>/dev/null |
    grep -o -e "$pattern" -e 'after step [0-9]*, checkpointed' | tr -dc '0-9\n' | sort -n | tail -1 | grep . || echo 0
)
gzip_records() {  # gzip_records FOLDER NAME...: those of the files that are there, gzipped (a quarter of the size,
  # or less; zofo reads either): the repository's files travel with every GPU call, within 64 MiB with its carry
  local folder=$1 name; shift
  for name in "$@"; do if [ -f "$folder/$name" ]; then gzip -9nf "$folder/$name"; fi; done
}
steps() {  # steps: RUN FROM TO STATE, the steps this call added to a run, which collect_lease.sh sums
  local to=0  # a run copied from another sweep's (reused.yaml) ran no step here
  if [ ! -f "$staging/$2/reused.yaml" ]; then to=$(reached "$staging/$2"); fi
  echo "steps: $2 $(reached "$(partial_folder "$2")") $to $1"
}
if [ ! -f "$archive" ] && [ -f "$archive.00" ]; then  # returned in parts (gpu_sweep.sh: over 15 MB)
  cat "$archive".[0-9][0-9] > "$staging.tgz" && archive=$staging.tgz
fi
tar xzf "$archive" -C "$staging" && find "$staging" -name .lock -delete  # a live run's lock, not a result
mkdir -p "$staging/results"  # an archive of a sweep that never started holds nothing: nothing to collect
# finished runs at any depth (a sweep's tuning runs are in runs/tuning/), and the sweep's tuning.md
(cd "$staging" && find results -name metrics.json -o -name tuning.md) | while read -r found; do
  if [ "$(basename "$found")" = tuning.md ]; then cp "$staging/$found" "$found"; continue; fi
  run=$(dirname "$found")
  if [ ! -d "$run" ] || [ ! -f "$run/metrics.json" ]; then
    steps finished "$run"
    mkdir -p "$run" && cp -r "$staging/$run/." "$run/" && echo "new: $run"
    gzip_records "$run" log.jsonl trajectory.jsonl
  fi
  rm -rf "$(partial_folder "$run")"
done
(cd "$staging" && find results -name checkpoint.pt) | while read -r found; do
  run=$(dirname "$found")
  if [ ! -f "$staging/$run/metrics.json" ] && [ ! -f "$run/metrics.json" ]; then
    partial=$(partial_folder "$run")
    steps part-way "$run"
    rm -rf "$partial" && mkdir -p "$partial" && cp -r "$staging/$run/." "$partial/"
    gzip_records "$partial" log.jsonl trajectory.jsonl output.log  # gpu_setup.sh unpacks them where it resumes
    echo "partial: $partial ($(du -sk "$partial" | cut -f1) KB)"
  fi
done
for sweep in $(ls "$staging"/results); do
  [ -d "results/$sweep/runs" ] || continue  # only unfinished runs came back: nothing to slim or report yet
  # the new runs lose their bulk (progress-bar redraws, most training records, steps after the selected one),
  # copied whole to results-full/ first: the repository travels with every GPU call (scripts/slim_runs.py)
  python3 scripts/slim_runs.py "results/$sweep/runs" | tail -1
  # a report needs a finished run with test metrics: tuning runs alone (runs/tuning/RUN) make none yet
  if [ -n "$(find "results/$sweep/runs" -mindepth 2 -maxdepth 2 -name metrics.json | head -1)" ]; then
    PYTHONPATH=src python3 -m zofo report "results/$sweep/runs" --output "results/$sweep" | tail -1
  fi
done
if [ -d results/partial ]; then
  find results/partial -mindepth 1 -type d -empty -delete  # the folders of runs that have finished
  echo "partial: $(find results/partial -name checkpoint.pt | wc -l) unfinished run(s) in results/partial" \
       "($(du -sh results/partial | cut -f1)): commit them, so that they outlive this checkout"
  # every GPU call carries the repository, 64 MiB with what it carries: a Bilevel-LoRA checkpoint is 15 MB
  if [ "$(du -sm results/partial | cut -f1)" -gt 16 ]; then
    echo "partial: results/partial is over 16 MB: each GPU call carries it; finish those runs in the next lease" \
         "(scripts/carry_plan.py says whether the setup calls still fit)"
  fi
fi
