"""Speed and memory of one zeroth-order step, against two forwards and against MeZO's style of loop.

Everything is measured side by side in one run, on random-init weights built from a config (speed
and memory do not depend on the values):
  forward      inference forward of the objective (no grad)
  zofo         SPSA + ZO-SGD, in-place, packed buckets, restore fused into the update (3 passes;
               the Triton kernel draws u in registers on a GPU)
  zofo-exact   SPSA + ZO-SGD, exact: θ ± εu written from a kept copy of θ, the update fused with the copy's
  zofo-per-module  SPSA + ZO-SGD, each module perturbed only during its forward (θ never perturbed in memory)
  mezo-loop    a loop written like MeZO's reference trainer: per-tensor torch.normal after
               reseeding, out-of-place add, 4 passes (perturb, perturb, restore, update)
Ratios: step time / (2 × forward time), peak memory / inference peak memory.

    python benchmarks/zo_step.py --model opt-1.3b --dtype bf16 --batch 16 --length 256   # on a GPU
    python benchmarks/zo_step.py --model smollm2 --dtype fp32 --batch 8 --length 128     # on the CPU
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, OPTConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from zofo.models import TINY_MODELS, bundled_model_folder, byte_tokenizer, resolve_dtype, tiny_config  # noqa: E402
from zofo.zo import SPSA, ParameterSpace, ZOSGD  # noqa: E402

VARIANTS = ("forward", "zofo", "zofo-exact", "zofo-per-module", "mezo-loop")


def model_config(name: str):
    if name in TINY_MODELS:
        return tiny_config(name, byte_tokenizer())
    if name == "opt-1.3b":
        return OPTConfig(hidden_size=2048, num_hidden_layers=24, ffn_dim=8192, num_attention_heads=32,
                         vocab_size=50272, max_position_embeddings=2048, word_embed_proj_dim=2048)
    if name == "smollm2":
        return AutoConfig.from_pretrained(bundled_model_folder())
    return AutoConfig.from_pretrained(name)


def build(args):
    device = torch.device(args.device)
    with device:
        model = AutoModelForCausalLM.from_config(model_config(args.model), dtype=resolve_dtype(args.dtype))
    model.requires_grad_(False).eval()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.length), generator=generator).to(device)
    return model, ids


def mezo_loop_step(model, objective, eps=1e-3, lr=1e-7, seed=0):
    """MeZO's reference style: reseed, regenerate every tensor with torch.normal, out-of-place adds."""
    params = [p for p in model.parameters()]

    def perturb(scale):
        torch.manual_seed(seed)
        for p in params:
            z = torch.normal(mean=0, std=1, size=p.data.size(), device=p.data.device, dtype=p.data.dtype)
            p.data = p.data + scale * z * eps

    perturb(1)
    loss_plus = objective()
    perturb(-2)
    loss_minus = objective()
    perturb(1)
    g = ((loss_plus - loss_minus) / (2 * eps)).item()  # MeZO's trainer syncs here
    torch.manual_seed(seed)
    for p in params:
        z = torch.normal(mean=0, std=1, size=p.data.size(), device=p.data.device, dtype=p.data.dtype)
        p.data = p.data - lr * g * z


def make_step(variant, model, objective):
    if variant == "forward":
        return lambda step: objective()
    if variant == "mezo-loop":
        return lambda step: mezo_loop_step(model, objective, seed=step)
    perturbation = {"zofo": "in-place", "zofo-exact": "exact", "zofo-per-module": "per-module"}[variant]
    space = ParameterSpace(model.named_parameters(), pack=perturbation != "per-module",
                           keep_origin=perturbation == "exact")
    spsa = SPSA(space, eps=1e-3, perturbation=perturbation, model=model)
    sgd = ZOSGD(space, lr=1e-7)
    return lambda step: sgd.step(spsa.estimate(objective, step))


def measure(variant, args) -> dict:
    model, ids = build(args)
    cuda = ids.device.type == "cuda"

    @torch.no_grad()
    def objective():
        return model(input_ids=ids, labels=ids).loss  # stays on the device; SPSA syncs once per estimate

    step = make_step(variant, model, objective)
    for i in range(args.warmup):
        step(i)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(args.iters):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step(args.warmup + i)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            step(args.warmup + i)
            times.append((time.perf_counter() - begin) * 1e3)
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"variant": variant, "ms": statistics.median(times), "peak_bytes": peak}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="opt-1.3b, smollm2, or an HF config folder/id")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--output", help="append the results as one JSON line to this file")
    parser.add_argument("--only", help=argparse.SUPPRESS)  # internal: measure one variant in this process
    args = parser.parse_args()

    if args.only:
        print(json.dumps(measure(args.only, args)))
        return
    results = {}
    for variant in args.variants.split(","):
        if args.device == "cpu":  # the CPU has no resettable peak: a fresh process per variant
            command = [sys.executable, __file__, *sys.argv[1:], "--only", variant]
            results[variant] = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
        else:
            results[variant] = measure(variant, args)
            torch.cuda.empty_cache()
    forward = results["forward"]
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"\n{args.model} {args.dtype}, batch {args.batch} x {args.length}, {device}")
    print("| variant | ms / step | x two forwards | peak GiB | x inference peak |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        r["x_two_forwards"] = r["ms"] / (2 * forward["ms"]) if name != "forward" else 0.5
        r["x_inference_peak"] = r["peak_bytes"] / forward["peak_bytes"]
        print(f"| {name} | {r['ms']:.1f} | {r['x_two_forwards']:.2f} | {r['peak_bytes'] / 2**30:.2f} | {r['x_inference_peak']:.3f} |")
    if args.output:
        record = {"model": args.model, "dtype": args.dtype, "batch": args.batch, "length": args.length,
                  "device": device, "results": results}
        with open(args.output, "a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
