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
per GPU. `--curve ARCH:STEPS` trains ARCH in fp32 at every N with one global batch (--curve-batch, split over
the ranks) and gives each N's largest difference to N = 1 in any logged loss and any final weight (the summation
order of the loss over ranks differs from one process's, so equal up to rounding rather than bit-identical).
Records are appended to --output as each launch ends. On the CPU
(`--device cpu --archs tiny --sharded tiny:2 --curve tiny:5`) it checks the script itself.
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
    "smollm2-135m": lambda: LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                        num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                                        tie_word_embeddings=True),
    "llama-70b": lambda: LlamaConfig(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                                     num_attention_heads=64, num_key_value_heads=8, vocab_size=32000),
    # Llama-70B's layers, 137 of them: 118 B parameters, 220 GiB in bf16, more than one H200 (139 GiB) holds
    "llama-118b": lambda: LlamaConfig(hidden_size=8192, intermediate_size=28672, num_hidden_layers=137,
                                      num_attention_heads=64, num_key_value_heads=8, vocab_size=32000),
}
K = 10


def task_data(vocab: int, global_batch: int, length: int) -> TaskData:
    """Every rank holds the same examples (four global batches); the samplers and the shards pick each rank's part."""
    examples = shared_examples(vocab, 4 * global_batch, length)
    return TaskData(task=get_task("sst2"), train=examples, validation=examples[:global_batch],
                    test=examples[:global_batch], metadata={}, loss_name="candidates", pad_id=0)


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
    """Mean seconds per call of `step` over `iters` consecutive calls after `warmup`: the ranks start together
    (a barrier, awaited), then run as in training, so any waiting of one rank for another is in the time."""
    for i in range(warmup):
        step(i)
    synchronize(device)
    distributed.sums(torch.zeros(1, device=device))  # a barrier on the process group's device...
    synchronize(device)  # ...awaited, so that the time starts when every rank is there
    start = time.perf_counter()
    for i in range(warmup, warmup + iters):
        step(i)
    synchronize(device)
    return (time.perf_counter() - start) / iters


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# workload -> (method, its fields, minibatches of the global batch per iteration)
WORKLOADS = {"zo-sgd": ("mezo", {"peft": "none"}, 1), "bilevel": ("bilevel", {"peft": "lora", "bilevel_k": K}, K + 2)}


def library_method(workload: str, model, data: TaskData, global_batch: int, dtype: str, iterations: int,
                   lr: float):
    """The library's own method (MeZO, Bilevel ZOFO) of `workload` on `model`, begun, with enough steps for
    `iterations` calls of its `step` (a ZO step, or a bilevel cycle of K + 1 counted steps)."""
    name, fields, _ = WORKLOADS[workload]
    config = make_config({"method": name, **fields, "batch_size": global_batch, "dtype": dtype,
                          "steps": (K + 1) * iterations, "lr": lr})
    trajectory = Trajectory(Path(tempfile.mkdtemp()) / "t.jsonl", writes=distributed.is_main())
    method = METHODS[name](model, TaskSet([data]), config, trajectory)
    method.begin()
    return method


def throughput(workload: str, model, data: TaskData, batch: int, device: torch.device, dtype: str, warmup: int,
               iters: int) -> dict:
    """Iterations of the library's method on `model`, timed; then the ranks' weights compared
    (distributed.check_same_weights raises if any differ)."""
    minibatches = WORKLOADS[workload][2]
    method = library_method(workload, model, data, batch * distributed.world_size(), dtype,
                            iterations=warmup + iters, lr=1e-7)
    seconds = timed(method.step, warmup, iters, device)
    distributed.check_same_weights(method.model, warmup + iters)
    return {"seconds": seconds, "examples_per_s": minibatches * batch * distributed.world_size() / seconds,
            "zo_parameters_per_rank": method.zo.space.numel}


# θ's learning rate in the curve runs: MeZO's trains visibly in 20 steps; Bilevel's objective F carries λ = 10
# times the penalty, and 1e-4 made the random-init model diverge within 20 cycles
CURVE_LR = {"zo-sgd": 1e-4, "bilevel": 1e-6}


def curve(workload: str, arch: str, steps: int, global_batch: int, length: int, device: torch.device,
          weights_file: Path) -> dict:
    """`steps` iterations (ZO steps or bilevel cycles) of `workload` in fp32, with one global batch whatever the
    number of processes: every step's logged losses; the ranks' weights compared after the last step, and rank
    0's saved to `weights_file` so that the launcher can compare runs of different N."""
    model = random_model(arch, torch.float32, device, sharded=False)
    data = task_data(ARCHS[arch]().vocab_size, global_batch, length)
    method = library_method(workload, model, data, global_batch, "fp32", iterations=steps, lr=CURVE_LR[workload])
    losses = []
    for i in range(steps):
        log = method.step(i)
        losses.append({key: float(value) for key, value in log.items()})
    distributed.check_same_weights(method.model, steps)
    if distributed.is_main():
        torch.save({n: p.detach().cpu() for n, p in method.model.named_parameters()}, weights_file)
    return {"arch": arch, "workload": f"{workload}-curve", "processes": distributed.world_size(), "sharded": False,
            "dtype": "fp32", "global_batch": global_batch, "length": length, "steps": steps, "losses": losses,
            "weights_file": str(weights_file), "weights_identical": True}


def worker(args) -> None:
    device = torch.device(args.device)
    device = distributed.setup(device, timeout_seconds=600, always=True)
    if args.curve:
        arch, steps = args.curve.split(":")
        records = [curve(workload, arch, int(steps), args.curve_batch, args.length, device,
                         Path(f"{args.part}.{workload}.pt")) for workload in args.workloads.split(",")]
        if distributed.is_main():
            with open(args.part, "a") as f:
                f.writelines(json.dumps(record) + "\n" for record in records)
        return distributed.teardown()
    dtype = "bf16" if device.type == "cuda" else "fp32"
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    records = []
    for arch in args.archs.split(","):
        for workload in args.workloads.split(","):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            model = random_model(arch, torch_dtype, device, args.shard)
            data = task_data(ARCHS[arch]().vocab_size, args.batch * distributed.world_size(), args.length)
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


def launch(n: int, args, archs: str, workloads: str, sharded: bool = False, curve: str | None = None) -> list[dict]:
    """torchrun --nproc-per-node n on this script's worker; its records."""
    part = Path(tempfile.mkdtemp()) / "part.jsonl"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n), __file__,
               "--worker", "--part", str(part), "--archs", archs, "--workloads", workloads, "--device", args.device,
               "--batch", str(args.batch), "--length", str(args.length), "--warmup", str(args.warmup),
               "--iters", str(args.iters), "--curve-batch", str(args.curve_batch)]
    command += (["--shard"] if sharded else []) + (["--curve", curve] if curve else [])
    what = f"{curve} fp32 curve, global batch {args.curve_batch}" if curve else archs + (" sharded" if sharded else "")
    print(f"N = {n}: {what} ({workloads})", flush=True)
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    return [json.loads(line) for line in part.read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nprocs", default="1,2", help="process counts for the data-parallel runs")
    parser.add_argument("--archs", default="opt-1.3b,llama-7b", help=f"of {', '.join(ARCHS)}")
    parser.add_argument("--workloads", default="zo-sgd,bilevel")
    parser.add_argument("--sharded", help="ARCH:N[,ARCH:N...]: MeZO with the weights sharded over N ranks (FSDP2)")
    parser.add_argument("--curve", metavar="ARCH:STEPS",
                        help="also train ARCH for STEPS steps in fp32 at every N of --nprocs with the same global "
                             "batch (--curve-batch), and compare each N's losses and final weights with N = 1's")
    parser.add_argument("--curve-batch", type=int, default=16, help="the curve runs' global batch")
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
    counts = [n for n in map(int, args.nprocs.split(",")) if n <= available]
    if len(counts) < len(args.nprocs.split(",")):
        print(f"only N <= {available} run: {available} {args.device} devices here")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    single = {}  # (arch, workload) -> examples/s at N = 1
    for n in counts if args.archs else []:
        for record in launch(n, args, args.archs, args.workloads):
            if n == 1:
                single[record["arch"], record["workload"]] = record["examples_per_s"]
            base = single.get((record["arch"], record["workload"]))
            record["scaling_efficiency"] = record["examples_per_s"] / (n * base) if base else None
            write(record, output)
    for spec in args.sharded.split(",") if args.sharded else []:
        arch, n = spec.split(":")
        for record in launch(int(n), args, arch, "zo-sgd", sharded=True):
            write(record, output)
    if args.curve:
        reference = {}  # workload -> N = 1's record
        for n in counts:
            for record in launch(n, args, "-", args.workloads, curve=args.curve):
                workload = record["workload"]
                reference.setdefault(workload, record)
                record.update(compare_curves(reference[workload], record))
                write(record, output)
    print(f"written to {output}")


def compare_curves(reference: dict, record: dict) -> dict:
    """How far a curve run is from N = 1's: for each logged value (losses, the projected gradient), its largest
    difference at any step; and the largest difference of any weight after the last step."""
    logged = {key: max(abs(a[key] - b[key]) for a, b in zip(reference["losses"], record["losses"]))
              for key in reference["losses"][0]}
    mine, theirs = torch.load(record["weights_file"]), torch.load(reference["weights_file"])
    weights, name = max(((mine[name] - theirs[name]).abs().max().item(), name) for name in mine)
    return {"max_logged_difference_to_n1": logged, "max_weight_difference_to_n1": weights,
            "max_weight_difference_in": name}


def write(record: dict, output: Path) -> None:
    """One record appended to the output (so that a run cut short keeps what it measured) and printed."""
    with open(output, "a") as f:
        f.write(json.dumps(record) + "\n")
    n = f"N={record['processes']}" + (" sharded" if record["sharded"] else "")
    if "losses" in record:
        differences = ", ".join(f"{key} {value:.1e}" for key, value in record["max_logged_difference_to_n1"].items())
        print(f"{record['arch']:12} {record['workload']:14} {n}: {record['steps']} iterations fp32, global batch "
              f"{record['global_batch']}, final train loss {record['losses'][-1]['train_loss']:.6f}; largest "
              f"difference to N=1: {differences}, any weight {record['max_weight_difference_to_n1']:.1e} "
              f"({record['max_weight_difference_in']}); "
              "weights identical across ranks")
        return
    efficiency = f"{record['scaling_efficiency']:.2f}" if record.get("scaling_efficiency") else "-"
    peak = ", ".join(f"{p:.1f}" for p in record["peak_gib_per_rank"] if p is not None) or "-"
    print(f"{record['arch']:12} {record['workload']:14} {n}: {record['seconds'] * 1e3:8.1f} ms, "
          f"{record['examples_per_s']:8.1f} examples/s, efficiency {efficiency}, peak GiB per rank [{peak}], "
          + ("each rank its own shard" if record["sharded"] else "weights identical across ranks"), flush=True)


if __name__ == "__main__":
    main()
