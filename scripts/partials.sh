#!/usr/bin/env bash
# Here: keep the unfinished runs that came back from a GPU machine (.gpu/partial, ignored by git, see
# collect_runs.sh) beyond this checkout. Ignored folders last as long as the checkout: session 14's part-way runs
# were lost with it. `save` stores .gpu/partial as the one commit of the local branch gpu-partials (an orphan
# commit, replaced at each save: main's history never holds checkpoints); `restore` brings it back into
# .gpu/partial when that folder is missing (gpu_prepare.sh does), from gpu-partials or, in a clone of this
# repository, origin/gpu-partials, leaving out the runs that have since finished in results/.
# The branch lasts as long as this machine's repository, not beyond: a later session's checkout may hold main alone
# (session 22's branch, 16 part-way runs, was gone in session 23; session 23's was still there in session 24), so
# plan a lease to finish the runs it starts.
# Usage: bash scripts/partials.sh save|restore
set -euo pipefail
cd "$(dirname "$0")/.."
branch=gpu-partials
case "${1:-}" in
  save)
    if [ -z "$(find .gpu/partial -name checkpoint.pt 2>/dev/null)" ]; then  # every run finished: nothing to keep
      if git rev-parse -q --verify "$branch" >/dev/null; then git branch -D "$branch" >/dev/null; echo "partials: none left, branch $branch deleted"; fi
      exit 0
    fi
    index=$(mktemp); rm -f "$index"; trap 'rm -f "$index"' EXIT
    # a temporary index: the working tree's own index and files stay as they are
    GIT_INDEX_FILE=$index git --work-tree=.gpu add -f partial
    tree=$(GIT_INDEX_FILE=$index git write-tree)
    if [ "$(git rev-parse -q --verify "$branch^{tree}" || true)" = "$tree" ]; then exit 0; fi
    runs=$(find .gpu/partial -name checkpoint.pt | wc -l)
    commit=$(echo "$runs unfinished run(s) from .gpu/partial, saved $(date -u +%F) by scripts/partials.sh" |
      git commit-tree "$tree")
    git branch -f "$branch" "$commit" >/dev/null
    echo "partials: $runs unfinished run(s) saved in branch $branch"
    ;;
  restore)
    [ -d .gpu/partial ] && exit 0
    source=$(git rev-parse -q --verify "$branch" || git rev-parse -q --verify "origin/$branch" || true)
    { [ -n "$source" ] && git cat-file -e "$source:partial" 2>/dev/null; } || exit 0
    mkdir -p .gpu && git archive "$source" partial | tar x -C .gpu
    for checkpoint in $(cd .gpu/partial && find . -name checkpoint.pt | sed 's|^\./||'); do
      run=$(dirname "$checkpoint")  # SWEEP/RUN, or SWEEP/tuning/RUN
      finished=results/${run%%/*}/runs/${run#*/}/metrics.json
      if [ -f "$finished" ]; then rm -rf ".gpu/partial/$run" && echo "partials: $run has finished since: left out"; fi
    done
    echo "partials: $(find .gpu/partial -name checkpoint.pt | wc -l) unfinished run(s) restored from $branch into .gpu/partial"
    ;;
  *) echo "usage: bash scripts/partials.sh save|restore" >&2; exit 2 ;;
esac
