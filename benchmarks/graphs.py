"""CUDA graphs against eager PyTorch, side by side in one run (issue 10's targets), on random-init weights.

SmolLM2-135M's architecture, fp32 and bf16, 16 examples x 128 tokens (two one-token candidates sharing
the context, as SST-2), through the library's own methods and model calls; every workload built once per
mode (eager; graphs; compiled = torch.compile inside the graphs) and timed in alternating rounds:
  zo-sgd    a two-sided ZO-SGD step on the full model (MeZO)
  fo-lora   a first-order LoRA step (forward, backward, Adam)
  bilevel   one Bilevel ZOFO cycle, K = 10, LoRA (K lower steps, φ's gradient, SPSA on F)
  scoring   candidate scoring of 64 examples, 16 rows per forward
  forward   one forward of the training loss (the captured forward is the reference below)
Each is also set against its compute floor (forward-equivalents x 2 x parameters x tokens FLOPs, at the
matmul rate measured here) and against the same number of captured forwards (of its own mode). The
dtype "tf32" is fp32 weights with TF32 matmuls (--tf32).

OPT-1.3B bf16: the ZO step with graphs against two captured forwards plus three fused passes over θ
(8 x 128), and at 16 x 256 the in-place and the exact perturbation against two forwards.

    python benchmarks/graphs.py [--modes eager,graphs,compiled] [--dtypes fp32,bf16,tf32]
                                [--workloads zo-sgd,scoring] [--output results/benchmarks/graphs.jsonl]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from method_step import shared_examples  # noqa: E402

from zofo.adapters import DEFAULT, adapter_parameters, with_adapters  # noqa: E402
from zofo.batches import TokenizedExample  # noqa: E402
from zofo.calls import ModelCalls, step_optimizer  # noqa: E402
from zofo.config import AdapterConfig, make_config  # noqa: E402
from zofo.data import TaskData, TaskSet  # noqa: E402
from zofo.evaluation import predict_options  # noqa: E402
from zofo.methods.bilevel import BilevelZOFO  # noqa: E402
from zofo.models import resolve_dtype  # noqa: E402
from zofo.tasks import get_task  # noqa: E402
from zofo.zo import SPSA, ZOSGD, ParameterSpace, Trajectory  # noqa: E402

SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, head_dim=64, vocab_size=49152, max_position_embeddings=8192,
                    rms_norm_eps=1e-5, tie_word_embeddings=True, rope_theta=100000.0)
MODES = ("eager", "graphs", "compiled")
WORKLOADS = ("zo-sgd", "fo-lora", "bilevel", "scoring", "forward")


def varied_examples(vocab: int, n: int, seed: int = 0) -> list[TokenizedExample]:
    """n examples of 8-60 context tokens with two candidates of 1-3 tokens (a row per option): batches
    of many shapes, for the correctness checks."""
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        context = tuple(rng.randrange(vocab) for _ in range(rng.randint(8, 60)))
        options = tuple((context, tuple(rng.randrange(vocab) for _ in range(rng.randint(1, 3)))) for _ in range(2))
        examples.append(TokenizedExample(options, label=rng.randrange(2)))
    return examples


def task_data(examples, calls: ModelCalls) -> TaskData:
    return TaskData(task=get_task("sst2"), train=examples, validation=examples[:64], test=examples[:64], metadata={},
                    loss_name="candidates", pad_id=0, calls=calls)


def fresh_model(config, dtype: str, seed: int = 0):
    torch.manual_seed(seed)
    with torch.device("cuda"):
        return AutoModelForCausalLM.from_config(config, dtype=resolve_dtype(storage(dtype))).eval()


def storage(dtype: str) -> str:
    """The parameters' dtype; "tf32" is fp32 weights with TF32 matmuls."""
    torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
    return "fp32" if dtype == "tf32" else dtype


def workload(name: str, mode: str, config, dtype: str, examples, batch: int):
    """(a callable doing one unit of `name`, its forward-equivalents, the ModelCalls it uses)."""
    calls = ModelCalls("graphs" if mode == "compiled" else mode, pad_id=0, compile=mode == "compiled")
    data, model = task_data(examples, calls), fresh_model(config, dtype)
    minibatch = examples[:batch]
    if name == "forward":
        return (lambda i: data.loss(model, minibatch)), 1, calls
    if name == "scoring":
        return (lambda i: predict_options(model, examples[:64], 0, batch, calls)), 64 / batch, calls
    if name == "zo-sgd":
        space = ParameterSpace(model.requires_grad_(False).named_parameters())
        spsa, sgd = SPSA(space, 1e-3), ZOSGD(space, 1e-7)
        return (lambda i: sgd.step(spsa.estimate(lambda: data.loss(model, minibatch), i))), 2, calls
    if name == "fo-lora":
        model = with_adapters(model, AdapterConfig(peft="lora"), [DEFAULT], seed=0)
        adam = torch.optim.Adam(adapter_parameters(model, DEFAULT), lr=1e-5)

        def fo_step(i):
            data.backward(model, minibatch)
            step_optimizer(adam)
        return fo_step, 2, calls  # forward + the activations' backward (no weight gradients of the base)
    if name == "bilevel":
        run = make_config(dict(peft="lora", bilevel_k=10, lr=1e-7, batch_size=batch, device="cuda", dtype=storage(dtype),
                                 steps=11_000))  # enough cycles for every timed one
        method = BilevelZOFO(model, TaskSet([data]), run, Trajectory(Path(tempfile.mkdtemp()) / "t.jsonl"))
        method.begin()
        # K lower steps (2 each), φ's gradient on B_FT and B_P (2 each), F twice on B_FT ∪ B_P and z on B_P
        return method.step, 2 * 10 + 4 + 2 * 3, calls
    raise ValueError(name)


def timed_ms(fn, iters: int, start: int) -> float:
    times = []
    for i in range(iters):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn(start + i)
        end.record()
        torch.cuda.synchronize()
        times.append(begin.elapsed_time(end))
    return statistics.median(times)


def matmul_tflops(dtype: str) -> float:
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=resolve_dtype(storage(dtype)))
    b = torch.randn(n, n, device="cuda", dtype=resolve_dtype(storage(dtype)))
    ms = timed_ms(lambda i: a @ b, 10, 0)
    return 2 * n**3 / (ms / 1e3) / 1e12


def smollm2_table(dtype: str, rounds: int, iters: int, modes, names, batch: int = 16, length: int = 128) -> dict:
    config = LlamaConfig(**SMOLLM2_135M)
    examples = shared_examples(config.vocab_size, 256, length)
    names = list(names) + (["forward"] if "forward" not in names else [])  # the reference
    built = {}
    for name in names:
        for mode in modes:
            fn, forwards, calls = workload(name, mode, config, dtype, examples, batch)
            begin = time.perf_counter()
            for i in range(2):  # warm-up; with graphs, the captures (and compiles)
                fn(i)
            torch.cuda.synchronize()
            built[name, mode] = dict(fn=fn, forwards=forwards, calls=calls, first_s=time.perf_counter() - begin, ms=[])
            print(f"  built {name} {mode} ({built[name, mode]['first_s']:.1f} s)", flush=True)
    for r in range(rounds):
        for key, b in built.items():
            b["ms"].append(timed_ms(b["fn"], iters if key[0] != "bilevel" else max(2, iters // 4), 10 + r * iters))
    parameters = sum(p.numel() for p in fresh_model(config, dtype).parameters())
    tflops = matmul_tflops(dtype)
    floor_forward_ms = 2 * parameters * batch * length / (tflops * 1e12) * 1e3
    rows = {}
    for name in names:
        eager = built[name, "eager"]
        for mode in modes[1:]:
            b = built[name, mode]
            captured_forward = statistics.median(built["forward", mode]["ms"])
            speedups = [e / g for e, g in zip(eager["ms"], b["ms"])]
            ms = statistics.median(b["ms"])
            rows[f"{name} {mode}"] = dict(
                workload=name, mode=mode, eager_ms=statistics.median(eager["ms"]), ms=ms,
                speedup=statistics.median(speedups), speedup_by_round=speedups, forwards=b["forwards"],
                x_floor=ms / (b["forwards"] * floor_forward_ms), x_captured_forwards=ms / (b["forwards"] * captured_forward),
                captures=b["calls"].captures, capture_s=b["calls"].capture_seconds, first_s=b["first_s"])
    return dict(model="smollm2-135m (random init)", dtype=dtype, batch=batch, length=length, parameters=parameters,
                matmul_tflops=tflops, floor_forward_ms=floor_forward_ms, rows=rows)


def opt_table(rounds: int, iters: int) -> dict:
    from zo_step import model_config

    config = model_config("opt-1.3b")
    results = {}
    for batch, length in ((8, 128), (16, 256)):
        results[f"{batch}x{length}"] = opt_shape(config, batch, length, rounds, iters)
        torch.cuda.empty_cache()
    return results


def opt_shape(config, batch: int, length: int, rounds: int, iters: int) -> dict:
    examples = shared_examples(config.vocab_size, 64, length)
    model = fresh_model(config, "bf16").requires_grad_(False)
    minibatch = examples[:batch]
    eager, graphs = (task_data(examples, ModelCalls(mode, pad_id=0)) for mode in ("eager", "graphs"))
    space = ParameterSpace(model.named_parameters())
    spsa, sgd = SPSA(space, 1e-3), ZOSGD(space, 1e-9)
    units = {"forward_eager": lambda i: eager.loss(model, minibatch),
             "forward_graphs": lambda i: graphs.loss(model, minibatch),
             "zo_step_eager": lambda i: sgd.step(spsa.estimate(lambda: eager.loss(model, minibatch), i)),
             "zo_step_graphs": lambda i: sgd.step(spsa.estimate(lambda: graphs.loss(model, minibatch), i)),
             "pass": lambda i: space.add_direction(i, 0.0)}
    if batch == 16:  # the exact perturbation: a second model, its space keeping a copy of θ
        exact_model = fresh_model(config, "bf16").requires_grad_(False)
        exact_space = ParameterSpace(exact_model.named_parameters(), keep_origin=True)
        exact_spsa, exact_sgd = SPSA(exact_space, 1e-3, perturbation="exact"), ZOSGD(exact_space, 1e-9)
        units["zo_step_exact_graphs"] = lambda i: exact_sgd.step(
            exact_spsa.estimate(lambda: graphs.loss(exact_model, minibatch), i))
    for fn in units.values():
        for i in range(2):
            fn(i)
    torch.cuda.synchronize()
    ms = {name: [] for name in units}
    for r in range(rounds):
        for name, fn in units.items():
            ms[name].append(timed_ms(fn, iters, 100 + r * iters))
    med = {name: statistics.median(v) for name, v in ms.items()}
    row = dict(ms=med, ms_by_round=ms,
               zo_graphs_x_floor=med["zo_step_graphs"] / (2 * med["forward_graphs"] + 3 * med["pass"]),
               zo_graphs_x_two_captured_forwards=med["zo_step_graphs"] / (2 * med["forward_graphs"]),
               zo_eager_x_two_eager_forwards=med["zo_step_eager"] / (2 * med["forward_eager"]))
    if "zo_step_exact_graphs" in med:
        row["exact_x_two_captured_forwards"] = med["zo_step_exact_graphs"] / (2 * med["forward_graphs"])
        row["exact_x_two_eager_forwards"] = med["zo_step_exact_graphs"] / (2 * med["forward_eager"])
        row["exact_x_in_place"] = med["zo_step_exact_graphs"] / med["zo_step_graphs"]
    return row


def profile_forward(dtype: str, compile: bool, batch: int = 16, length: int = 128, rows: int = 25) -> None:
    """The device's time per kernel in replays of the captured forward, to show where it goes."""
    config = LlamaConfig(**SMOLLM2_135M)
    examples = shared_examples(config.vocab_size, batch, length)
    data, model = task_data(examples, ModelCalls("graphs", pad_id=0, compile=compile)), fresh_model(config, dtype)
    for i in range(3):
        data.loss(model, examples)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for i in range(10):
            data.loss(model, examples)
        torch.cuda.synchronize()
    print(f"\ncaptured forward{' (compiled)' if compile else ''}, {dtype}, {batch} x {length}: kernels by device time (10 replays)")
    print(prof.key_averages().table(sort_by="device_time_total", row_limit=rows))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--dtypes", default="fp32,bf16", help="fp32, bf16, tf32 (fp32 weights, TF32 matmuls)")
    parser.add_argument("--modes", default="eager,graphs", help=f"eager first, then any of {MODES[1:]}")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--skip-opt", action="store_true")
    parser.add_argument("--profile", metavar="DTYPE", help="only profile the captured forward in this dtype")
    parser.add_argument("--output", help="append the results as one JSON line to this file")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("CUDA graphs need a CUDA device")
    if args.profile:
        return profile_forward(args.profile, compile="compiled" in args.modes)
    record = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    modes = tuple(args.modes.split(","))
    if modes[0] != "eager" or not set(modes[1:]) <= set(MODES[1:]):
        sys.exit(f"--modes: eager first, then any of {MODES[1:]}")
    for dtype in args.dtypes.split(","):
        table = smollm2_table(dtype, args.rounds, args.iters, modes, args.workloads.split(","))
        print(f"\nSmolLM2-135M architecture, {dtype}, {table['batch']} x {table['length']}; matmul "
              f"{table['matmul_tflops']:.0f} TFLOP/s, compute floor of a forward {table['floor_forward_ms']:.2f} ms")
        print("| workload | mode | eager ms | ms | speed-up (each round) | x compute floor | x captured forwards | "
              "graphs (capture + compile s) |")
        print("|---|---|---|---|---|---|---|---|")
        for r in table["rows"].values():
            rounds = ", ".join(f"{x:.2f}" for x in r["speedup_by_round"])
            print(f"| {r['workload']} | {r['mode']} | {r['eager_ms']:.1f} | {r['ms']:.1f} | {r['speedup']:.2f} ({rounds}) | "
                  f"{r['x_floor']:.1f} | {r['x_captured_forwards']:.2f} | {r['captures']} ({r['capture_s']:.1f}) |", flush=True)
        if args.output:  # each dtype as soon as it is done: a call cut short keeps what finished
            with open(args.output, "a") as f:
                f.write(json.dumps({**record, "smollm2": table}) + "\n")
    if not args.skip_opt:
        record["opt"] = opt_table(args.rounds, args.iters)
        print("\nOPT-1.3B bf16 (random init), ms (medians of rounds)")
        for shape, row in record["opt"].items():
            print(f"{shape}: " + ", ".join(f"{k} {v:.2f}" for k, v in row["ms"].items()))
            print(f"  ZO step with graphs / (2 captured forwards + 3 passes) = {row['zo_graphs_x_floor']:.3f}; "
                  f"/ 2 captured forwards = {row['zo_graphs_x_two_captured_forwards']:.3f}; "
                  f"eager step / 2 eager forwards = {row['zo_eager_x_two_eager_forwards']:.3f}")
            if "exact_x_two_captured_forwards" in row:
                print(f"  exact perturbation: / 2 captured forwards = {row['exact_x_two_captured_forwards']:.3f}, "
                      f"/ in-place step = {row['exact_x_in_place']:.3f}")
        if args.output:
            with open(args.output, "a") as f:
                f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
