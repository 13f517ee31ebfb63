"""Zeroth-order training over several GPUs: data-parallel throughput and sharded MeZO (issue 13's script; the
multi-GPU issue runs it). Random-init weights, bf16 on CUDA (fp32 on the CPU), through the library's own code
paths (distributed.py, ParameterSpace over FSDP2 shards, BilevelZOFO with its sharded minibatches).

    python benchmarks/distributed.py --nprocs 1,2,4 --archs opt-1.3b,llama-7b --sharded llama-70b:4 \
                                     --output results/benchmarks/distributed.jsonl

For each N of --nprocs the script launches `torchrun --standalone --nproc-per-node N` on itself and measures,
per architecture, with `--batch` examples of `--length` tokens per GPU (global batch N x batch):
  zo-sgd    a two-sided ZO-SGD step (MeZO on the full model): examples/s = global batch / step time
  bilevel   a Bilevel ZOFO cycle (K = 10, LoRA r 8 on q/v): examples/s = (K + 2) x global batch / cycle time
            (K lower minibatches, then B_FT and B_P of the upper step)
and checks that the ranks hold identical weights after the timed ZO steps (a checksum of every tensor,
distributed.check_same_weights). Scaling efficiency = examples/s at N / (N x examples/s at 1).
`--sharded ARCH:N` runs MeZO with the weights split over N ranks by FSDP2 (built on the meta device and
materialised shard by shard, so no rank ever holds the whole model): step time, examples/s and peak memory
per GPU. On the CPU (`--device cpu --archs tiny --sharded tiny:2`) it checks the script itself.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, OPTConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from method_step import shared_examples  # noqa: E402

from zofo import distributed  # noqa: E402
from zofo.config import make_config  # noqa: E402
from zofo.data import TaskData, TaskSet  # noqa: E402
from zofo.methods import METHODS  # noqa: E402
from zofo.tasks import get_task  # noqa: E402
from zofo.zo import Trajectory  # noqa: E402

ARCHS = {
    "tiny": lambda: LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, vocab_size=512),
    "opt-1.3b": lambda: OPTConfig(hidden_size=2048, ffn_dim=8192, num_hidden_layers=24, num_attention_heads=32,
                                  vocab_size=50272, max_position_embeddings=2048, word_embed_proj_dim=2048),
    "llama-7b": lambda: LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                    num_attention_heads=32, num_key_value_heads=32, vocab_size=32000),
    "llama-70b": lambda: LlamaConfig(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                                     num_attention_heads=64, num_key_value_heads=8, vocab_size=32000),
}
K = 10


def task_data(vocab: int, batch: int, length: int) -> TaskData:
    """Every rank holds the same examples; the samplers and the shards pick each rank's part."""
    examples = shared_examples(vocab, 4 * batch * distributed.world_size(), length)
    return TaskData(task=get_task("sst2"), train=examples, validation=examples[:batch], test=examples[:batch],
                    metadata={}, loss_name="candidates", pad_id=0)


def random_model(arch: str, dtype: torch.dtype, device: torch.device, sharded: bool):
    """Random-init weights. Sharded: built on the meta device, split by FSDP2, then each rank's slices are
    materialised and drawn (so no rank holds the whole model); the rotary frequencies recomputed."""
    config = ARCHS[arch]()
    torch.manual_seed(0)  # every rank the same weights (the weight check would stop a run whose ranks differ)
    if not sharded:
        with device:
            return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    distributed.shard_weights(model, device)
    model.to_empty(device=device)
    with torch.no_grad():
        for name, p in model.named_parameters():
            local = p.to_local()
            local.fill_(1.0) if "norm" in name else local.normal_(0, 0.02)
        for module in model.modules():
            if hasattr(module, "inv_freq"):  # non-persistent buffers: not materialised from the meta device
                dim = module.inv_freq.numel() * 2
                base = getattr(config, "rope_theta", None) or config.rope_parameters["rope_theta"]
                module.inv_freq.copy_(1.0 / base ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))
    return model


def timed(step, warmup: int, iters: int, device: torch.device) -> float:
    """Median seconds of `step` over `iters` calls after `warmup`, every rank in step."""
    for i in range(warmup):
        step(i)
    times = []
    for i in range(warmup, warmup + iters):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        distributed.sums(torch.zeros(1, device=device))  # a barrier on the process group's device
        start = time.perf_counter()
        step(i)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# workload -> (method, its fields, minibatches of the global batch per iteration)
WORKLOADS = {"zo-sgd": ("mezo", {"peft": "none"}, 1), "bilevel": ("bilevel", {"peft": "lora", "bilevel_k": K}, K + 2)}


def throughput(workload: str, model, data: TaskData, batch: int, device: torch.device, dtype: str, warmup: int,
               iters: int) -> dict:
    """Iterations of the library's own method (MeZO, Bilevel ZOFO) on `model`, timed; then the ranks' weights
    compared (distributed.check_same_weights raises if any differ)."""
    name, fields, minibatches = WORKLOADS[workload]
    config = make_config({"method": name, **fields, "batch_size": batch * distributed.world_size(), "dtype": dtype,
                          "steps": (K + 1) * (warmup + iters), "lr": 1e-7})
    trajectory = Trajectory(Path(tempfile.mkdtemp()) / "t.jsonl", writes=distributed.is_main())
    method = METHODS[name](model, TaskSet([data]), config, trajectory)
    method.begin()
    seconds = timed(method.step, warmup, iters, device)
    distributed.check_same_weights(method.model, warmup + iters)
    return {"seconds": seconds, "examples_per_s": minibatches * batch * distributed.world_size() / seconds,
            "zo_parameters_per_rank": method.zo.space.numel}


def worker(args) -> None:
    device = torch.device(args.device)
    device = distributed.setup(device, timeout_seconds=600, always=True)
    dtype = "bf16" if device.type == "cuda" else "fp32"
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    records = []
    for arch in args.archs.split(","):
        for workload in args.workloads.split(","):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            model = random_model(arch, torch_dtype, device, args.shard)
            data = task_data(ARCHS[arch]().vocab_size, args.batch, args.length)
            result = throughput(workload, model, data, args.batch, device, dtype, args.warmup, args.iters)
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
            peaks = distributed.gather([peak])
            records.append({"arch": arch, "workload": workload, "processes": distributed.world_size(),
                            "sharded": args.shard, "dtype": dtype, "batch_per_rank": args.batch,
                            "length": args.length, "peak_gib_per_rank": peaks,
                            "weights_identical": None if args.shard else True,  # sharded: each rank its own slice
                            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                            **result})
            del model, data
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if distributed.is_main():
        with open(args.part, "a") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")
    distributed.teardown()


def launch(n: int, args, archs: str, workloads: str, sharded: bool) -> list[dict]:
    """torchrun --nproc-per-node n on this script's worker; its records."""
    part = Path(tempfile.mkdtemp()) / "part.jsonl"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n), __file__,
               "--worker", "--part", str(part), "--archs", archs, "--workloads", workloads, "--device", args.device,
               "--batch", str(args.batch), "--length", str(args.length), "--warmup", str(args.warmup),
               "--iters", str(args.iters)] + (["--shard"] if sharded else [])
    print(f"N = {n}{' sharded' if sharded else ''}: {archs} ({workloads})", flush=True)
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    return [json.loads(line) for line in part.read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nprocs", default="1,2", help="process counts for the data-parallel runs")
    parser.add_argument("--archs", default="opt-1.3b,llama-7b", help=f"of {', '.join(ARCHS)}")
    parser.add_argument("--workloads", default="zo-sgd,bilevel")
    parser.add_argument("--sharded", help="ARCH:N: MeZO with the weights sharded over N ranks (FSDP2)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=16, help="examples per GPU")
    parser.add_argument("--length", type=int, default=256, help="tokens per example")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--output", default="results/benchmarks/distributed.jsonl")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--part", help=argparse.SUPPRESS)
    parser.add_argument("--shard", action="store_true", help=argparse.SUPPRESS)  # the worker's: weights sharded
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    available = torch.cuda.device_count() if args.device == "cuda" else os.cpu_count()
    records = []
    for n in map(int, args.nprocs.split(",")):
        if n > available:
            print(f"N = {n}: skipped, {available} {args.device} devices here")
            continue
        records += launch(n, args, args.archs, args.workloads, sharded=False)
    if args.sharded:
        arch, n = args.sharded.split(":")
        records += launch(int(n), args, arch, "zo-sgd", sharded=True)
    single = {(r["arch"], r["workload"]): r["examples_per_s"] for r in records if r["processes"] == 1 and not r["sharded"]}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "a") as f:
        for r in records:
            base = single.get((r["arch"], r["workload"]))
            r["scaling_efficiency"] = r["examples_per_s"] / (r["processes"] * base) if base and not r["sharded"] else None
            f.write(json.dumps(r) + "\n")
            efficiency = f"{r['scaling_efficiency']:.2f}" if r["scaling_efficiency"] else "-"
            peak = ", ".join(f"{p:.1f}" for p in r["peak_gib_per_rank"] if p is not None) or "-"
            print(f"{r['arch']:10} {r['workload']:8} N={r['processes']}{' sharded' if r['sharded'] else ''}: "
                  f"{r['seconds'] * 1e3:8.1f} ms, {r['examples_per_s']:8.1f} examples/s, efficiency {efficiency}, "
                  f"peak GiB per rank [{peak}], " + ("each rank its own shard" if r["sharded"] else
                                                     "weights identical across ranks"))
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
