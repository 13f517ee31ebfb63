"""What `--compile` costs before its first step: the first call of a compiled loss and of a compiled LoRA
backward (forward + backward), SmolLM2-135M's architecture at random init with LoRA, with the decoder
layers compiled (regional, what zofo does) against each whole call compiled (what it did until session 11).

Each way runs in a process of its own with an empty inductor cache, one after the other; then a second
call of each (no compile) to show what the first call's time is made of. Static shapes (the graphs'
padding) on the CPU, CUDA graphs on a GPU.

    python benchmarks/compile_time.py [--device cpu|cuda] [--batch 4] [--length 32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

WAYS = ("regional", "whole")


def measure(way: str, device: str, batch: int, length: int) -> dict:
    """In this process: seconds of each call, the first ones compiling."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from graphs import SMOLLM2_135M, task_data
    from method_step import shared_examples
    from zofo import calls as calls_module
    from zofo.adapters import DEFAULT, with_adapters
    from zofo.calls import ModelCalls
    from zofo.config import AdapterConfig

    if way == "whole":  # a model that names no blocks: each call is compiled whole
        calls_module.repeated_blocks = lambda model: []
    torch.manual_seed(0)
    config = LlamaConfig(**SMOLLM2_135M)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config).eval()
    model = with_adapters(model, AdapterConfig(peft="lora"), [DEFAULT], seed=0)
    examples = shared_examples(config.vocab_size, batch, length)
    data = task_data(examples, ModelCalls("graphs" if device == "cuda" else "static", pad_id=0, compile=True))
    seconds = {}
    for label, call in (("loss", lambda: data.loss(model, examples)), ("backward", lambda: data.backward(model, examples))):
        for attempt in ("first", "second"):
            start = time.perf_counter()
            call()
            if device == "cuda":
                torch.cuda.synchronize()
            seconds[f"{label} {attempt}"] = round(time.perf_counter() - start, 2)
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--way", choices=WAYS, help=argparse.SUPPRESS)  # the child process's
    args = parser.parse_args()
    if args.way:
        return print(json.dumps(measure(args.way, args.device, args.batch, args.length)))
    results = {}
    for way in WAYS:
        with tempfile.TemporaryDirectory() as cache:
            child = subprocess.run([sys.executable, __file__, "--way", way, "--device", args.device, "--batch",
                                    str(args.batch), "--length", str(args.length)], capture_output=True, text=True,
                                   env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache})
        if child.returncode:  # the other way's numbers are still worth printing
            print(f"{way} failed:\n{child.stderr[-3000:]}", file=sys.stderr)
            continue
        results[way] = json.loads(child.stdout.strip().splitlines()[-1])
        print(way, json.dumps(results[way]), flush=True)  # kept if a later way fails
    if len(results) < len(WAYS):
        sys.exit(1)
    print(f"SmolLM2-135M architecture + LoRA, {args.device}, {args.batch} x {args.length}, empty inductor cache; seconds")
    print("| call | " + " | ".join(WAYS) + " |\n|---|---|---|")
    for call in results[WAYS[0]]:
        print(f"| {call} | " + " | ".join(f"{results[way][call]:.1f}" for way in WAYS) + " |")


if __name__ == "__main__":
    main()
