"""Time and peak memory of one training step of each method, side by side in one run (Table 7 and
Figure 5 of the paper, and the cost of a Bilevel ZOFO upper step).

Random-init weights from a config; a synthetic classification batch (B examples, 2 candidates of one
token, contexts of L tokens) through the library's own batches, losses and methods:
  fo-lora       first-order LoRA: forward + backward + Adam on the adapter, K + 1 steps per timed call
  fo-full       first-order full fine-tuning with Adam (memory reference)
  mezo          SPSA + ZO-SGD on every base weight
  bilevel-lora  K lower first-order steps + 1 upper step (φ Adam step, then two-sided SPSA on F, each
                F in two model calls); reported per step with lower and upper steps counted together;
                its upper step is also timed piece by piece
  bilevel-lora-same-point  the authors' variant: one-sided SPSA at the old φ, F(θ) reusing the losses
                of φ's gradient passes (bilevel_order same-point, zo_one_sided)

Every method is built first (its own model, its peak memory counted from before that model existed),
then all are timed in `rounds`, each round timing every method in turn; the ratio to fo-lora is taken
within each round, so that a drift of the machine during the run reaches every method alike.

    python benchmarks/method_step.py configs/benchmarks/step_cost.yaml
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from zo_step import model_config  # noqa: E402

from zofo.adapters import DEFAULT, activate, adapter_parameters, with_adapters  # noqa: E402
from zofo.batches import TokenizedExample  # noqa: E402
from zofo.calls import step_optimizer  # noqa: E402
from zofo.config import AdapterConfig, make_config  # noqa: E402
from zofo.data import TaskData, TaskSet  # noqa: E402
from zofo.methods.bilevel import LOWER, UPPER, BilevelZOFO, UpperObjective  # noqa: E402
from zofo.models import resolve_dtype  # noqa: E402
from zofo.tasks import get_task  # noqa: E402
from zofo.zo import SPSA, ParameterSpace, Trajectory, ZOSGD  # noqa: E402

SPEC_KEYS = {"model", "dtype", "device", "batch_size", "length", "bilevel_k", "methods", "warmup", "iters", "rounds",
             "pieces"}


def shared_examples(vocab: int, n: int, length: int, seed: int = 0) -> list[TokenizedExample]:
    """n examples of `length` tokens and two one-token candidates after one context (one row each)."""
    g = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(n):
        context = tuple(torch.randint(0, vocab, (length - 1,), generator=g).tolist())
        a, b = torch.randint(0, vocab, (2,), generator=g).tolist()
        examples.append(TokenizedExample(((context, (a,)), (context, (b,))), label=0))
    return examples


def synthetic_data(vocab: int, batch: int, length: int, seed: int = 0) -> TaskData:
    examples = shared_examples(vocab, 4 * batch, length, seed)
    return TaskData(task=get_task("sst2"), train=examples, validation=examples[:batch], test=examples[:batch],
                    metadata={}, loss_name="candidates", pad_id=0)


def fresh_model(spec):
    with torch.device(spec["device"]):
        model = AutoModelForCausalLM.from_config(model_config(spec["model"]), dtype=resolve_dtype(spec["dtype"]))
    return model.eval()


def step_fn(method: str, spec: dict, data: TaskData):
    """A callable doing one step of `method` on a fresh model, and the number of steps it covers."""
    model, device, B = fresh_model(spec), spec["device"], spec["batch_size"]
    examples = data.train[:B]
    if method in ("fo-lora", "fo-full"):
        if method == "fo-lora":
            model = with_adapters(model, AdapterConfig(peft="lora"), [DEFAULT], seed=0)
        params = adapter_parameters(model, DEFAULT) if method == "fo-lora" else list(model.parameters())
        optimizer = torch.optim.Adam(params, lr=1e-5)

        steps = spec["bilevel_k"] + 1  # one host sync per K + 1 steps, as in a bilevel cycle

        def step(i):  # as the trainer does it: the batch is built from examples every step
            for _ in range(steps):
                data.backward(model, examples)
                step_optimizer(optimizer)
        return step, steps
    if method == "mezo":
        model.requires_grad_(False)
        space = ParameterSpace(model.named_parameters())
        spsa, sgd = SPSA(space, 1e-3), ZOSGD(space, 1e-7)

        def step(i):
            sgd.step(spsa.estimate(lambda: data.loss(model, examples), i))
        return step, 1
    if method in BILEVEL_VARIANTS:
        K = spec["bilevel_k"]
        config = make_config({"peft": "lora", "bilevel_k": K, "lr": 1e-7, "bilevel_lower_lr": 1e-4,
                              "bilevel_upper_lr": 1e-4, "device": str(device), **BILEVEL_VARIANTS[method]})
        trajectory = Trajectory(Path(tempfile.mkdtemp()) / "trajectory.jsonl")
        bilevel = BilevelZOFO(model, TaskSet([data]), config, trajectory)
        bilevel.begin()
        ft, peft = data.train[:B], data.train[B : 2 * B]

        def step(i):
            bilevel.lower_level([peft] * K)
            bilevel.upper_step(ft, peft, i, step=i)
        step.forwards = bilevel.forward_passes_per_upper_cycle()
        step.parts = upper_step_parts(bilevel, ft, peft, pieces=method == "bilevel-lora" and spec["pieces"])
        return step, K + 1
    raise ValueError(f"unknown method {method!r}")


BILEVEL_VARIANTS = {"bilevel-lora": {}, "bilevel-lora-same-point": {"bilevel_order": "same-point", "zo_one_sided": True}}


def upper_step_parts(bilevel: BilevelZOFO, ft: list, peft: list, pieces: bool) -> dict:
    """The two kinds of step timed alone and, with `pieces`, the pieces of an upper step, to show where
    its time goes (B = the batch size)."""
    model, data = bilevel.model, bilevel.data
    both, one = data.batch(ft + peft), data.batch(ft)

    def switch(i):  # z then φ again: two of peft's set_adapter walks
        activate(bilevel.peft_model, LOWER)
        activate(bilevel.peft_model, UPPER)

    def forward(batch):
        def run(i):
            return data.calls.losses(model, batch, data.loss_name)[0].sum().item()
        return run

    def forward_backward(i):
        data.backward(model, ft)

    def phi_gradient_and_adam(i):
        bilevel.phi_gradient(ft, peft)
        bilevel.phi_update()

    def f_once(i):
        UpperObjective(model, data, ft, peft, bilevel.lam, separate=bilevel.reuse_phi_forwards)()
        activate(bilevel.peft_model, UPPER)

    steps = {"lower_step": lambda i: bilevel.lower_level([peft]),
             "upper_step": lambda i: bilevel.upper_step(ft, peft, i, step=i)}
    if not pieces:
        return steps
    return {**steps, "phi_gradient_and_adam": phi_gradient_and_adam,
            "f_evaluation": f_once, "theta_pass": lambda i: bilevel.zo.space.add_direction(i, 0.0),
            "forward_no_grad_B": forward(one), "forward_no_grad_2B": forward(both), "forward_backward_B": forward_backward,
            "build_batch_2B": lambda i: data.batch(ft + peft), "adapter_switch_x2": switch}


def median_ms(fn, spec: dict, cuda: bool) -> float:
    times = []
    for i in range(spec["iters"]):
        begin = time.perf_counter()
        fn(spec["warmup"] + i)
        if cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - begin) * 1e3)
    return statistics.median(times)


def profile(method: str, step, spec: dict, path: str) -> None:
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch.profiler.profile(activities=activities) as prof:
        step(10_000)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    events = prof.key_averages()
    device_key = "device_time_total" if torch.cuda.is_available() else "cpu_time_total"
    with open(path, "a") as f:
        f.write(f"\n## {method}\nlabelled phases (host ms, device ms, calls):\n")
        for e in events:
            if e.key.startswith("bilevel."):
                f.write(f"  {e.key}: {e.cpu_time_total / 1e3:.1f}, {getattr(e, 'device_time_total', 0) / 1e3:.1f}, {e.count}\n")
        f.write(events.table(sort_by=device_key, row_limit=25) + "\n")


def build(method: str, spec: dict, data: TaskData, cuda: bool) -> dict:
    """The method's step on its own fresh model, warmed up; its peak memory counted from before its model
    existed (the other methods' models stay resident but idle, so they add a constant)."""
    before = torch.cuda.memory_allocated() if cuda else 0
    step, covers = step_fn(method, spec, data)
    for i in range(spec["warmup"]):
        step(i)
    peak = None
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step(spec["warmup"])
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    return {"method": method, "step": step, "steps_per_call": covers, "peak_bytes": peak, "ms_per_call_by_round": []}


def measure(spec: dict, data: TaskData, profile_path: str | None = None) -> list[dict]:
    """Every method built first, then timed in rounds, each round timing every method in turn: a drift of
    the machine during the run (clocks, the allocator, garbage collection) then reaches every method
    alike, and each round gives its own ratio to fo-lora."""
    cuda = spec["device"].startswith("cuda")
    built = [build(method, spec, data, cuda) for method in spec["methods"]]
    for _ in range(spec["rounds"]):
        for b in built:
            b["ms_per_call_by_round"].append(median_ms(b["step"], spec, cuda))
    results = []
    for b in built:
        step = b.pop("step")
        rounds = b["ms_per_call_by_round"]
        result = {**b, "ms_per_call": statistics.median(rounds), "ms_per_step": statistics.median(rounds) / b["steps_per_call"]}
        if hasattr(step, "forwards"):
            result["forward_passes_per_upper_cycle"] = step.forwards
        result["parts_ms"] = {name: median_ms(part, spec, cuda) for name, part in getattr(step, "parts", {}).items()}
        if profile_path:
            profile(b["method"], step, spec, profile_path)
        results.append(result)
    return results


def load_spec(path: str) -> dict:
    spec = yaml.safe_load(Path(path).read_text()) or {}
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise SystemExit(f"{path}: unknown key(s) {sorted(unknown)}; allowed: {sorted(SPEC_KEYS)}")
    missing = {"model", "batch_size", "length"} - set(spec)
    if missing:
        raise SystemExit(f"{path}: missing key(s) {sorted(missing)}")
    unknown_methods = set(spec.get("methods", [])) - {"fo-lora", "fo-full", "mezo", *BILEVEL_VARIANTS}
    if unknown_methods:
        raise SystemExit(f"{path}: unknown method(s) {sorted(unknown_methods)}")
    return spec


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="YAML: model, dtype, device, batch_size, length, bilevel_k, methods, warmup, iters, rounds")
    parser.add_argument("--output", help="append the results as one JSON line to this file")
    parser.add_argument("--profile", metavar="FILE", help="also profile one call of each method with torch.profiler "
                        "and write the busiest operations and the library's labelled phases (bilevel.*) to FILE")
    args = parser.parse_args()
    spec = {"dtype": "bf16", "device": "cuda" if torch.cuda.is_available() else "cpu", "warmup": 2, "iters": 5, "rounds": 3, "pieces": True,
            "bilevel_k": 20, "methods": ["fo-lora", "mezo", *BILEVEL_VARIANTS, "fo-full"],
            **load_spec(args.config)}
    data = synthetic_data(model_config(spec["model"]).vocab_size, spec["batch_size"], spec["length"])
    results = measure(spec, data, args.profile)
    fo = next((r for r in results if r["method"] == "fo-lora"), None)
    for r in results:  # each round's ratio to the fo-lora step timed in the same round
        r["x_fo_lora_by_round"] = [(ms / r["steps_per_call"]) / (fo_ms / fo["steps_per_call"]) for ms, fo_ms in
                                   zip(r["ms_per_call_by_round"], fo["ms_per_call_by_round"])] if fo else []
    print(f"\n{spec['model']} {spec['dtype']}, batch {spec['batch_size']} x {spec['length']}, K = {spec['bilevel_k']}, "
          f"{spec['rounds']} rounds of {spec['iters']} calls per method")
    print("| method | ms / step (median of rounds) | x fo-lora step, median (each round) | ms / call (steps) | peak GiB |")
    print("|---|---|---|---|---|")
    for r in results:
        ratios = r["x_fo_lora_by_round"]
        ratio = f"{statistics.median(ratios):.2f} ({', '.join(f'{x:.2f}' for x in ratios)})" if ratios else "n/a"
        peak = f"{r['peak_bytes'] / 2**30:.2f}" if r["peak_bytes"] else "n/a"
        extra = f", {r['forward_passes_per_upper_cycle']} minibatch forwards" if "forward_passes_per_upper_cycle" in r else ""
        print(f"| {r['method']} | {r['ms_per_step']:.1f} | {ratio} | {r['ms_per_call']:.1f} ({r['steps_per_call']}{extra}) | {peak} |")
    for r in results:
        if r["parts_ms"]:
            parts = ", ".join(f"{name} {ms:.1f}" for name, ms in r["parts_ms"].items())
            print(f"{r['method']}, parts timed alone (ms): {parts}")
    if args.output:
        with open(args.output, "a") as f:
            f.write(json.dumps({"spec": spec, "results": results}) + "\n")


if __name__ == "__main__":
    main()
