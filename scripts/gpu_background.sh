#!/usr/bin/env bash
# On the GPU machine: a measurement longer than one call (a call may run 10 minutes, the machine stays warm
# only 30 s after it), run once in a session of its own (setsid), so that it goes on between calls while the
# machine is warm. The first call starts COMMAND with OUT=/tmp/zofo/NAME.out; every call (the first
# included) waits up to WAIT_SECONDS for it to end, then copies what it has written there so far, and the
# end of its output, to $OUT/NAME/. The same NAME again only waits: call it with the same line until it has
# ended ("NAME: ended" in the output).
# Usage: WAIT_SECONDS=540 bash scripts/gpu_background.sh NAME COMMAND...
#   e.g. bash scripts/gpu_background.sh issue10 bash -c 'COLD=1 bash scripts/gpu_end_to_end.sh compiled mezo'
name=${1:?usage: gpu_background.sh NAME COMMAND...}; shift
source scripts/gpu_setup.sh
OUT=${OUT:-.}
work=/tmp/zofo/$name.out; mkdir -p $work
running() { [ -f $work/.pid ] && kill -0 "$(cat $work/.pid)" 2>/dev/null; }
if [ ! -f $work/.pid ]; then
  (export OUT=$work; setsid "$@" > $work/output.log 2>&1 < /dev/null & echo $! > $work/.pid)
fi
deadline=$((SECONDS + ${WAIT_SECONDS:-540}))
while running && [ $SECONDS -lt $deadline ]; do sleep 5; done
running && echo "$name: still running" || echo "$name: ended"
mkdir -p $OUT/$name && cp -r $work/. $OUT/$name/ && rm -f $OUT/$name/.pid
tail -c 4000 $work/output.log | tr '\r' '\n' | grep -v "it/s\]" | tail -25
