"""How much does splitting a training minibatch into length groups (`--length-groups`) save, task by task?

A minibatch padded to its longest input carries about 2.3 times the real tokens on CB and RTE (their inputs
run from tens to hundreds of tokens); in groups of similar length, each padded on its own, fewer. Each group
is a model call of its own, so where a step is bound by launches rather than arithmetic (short inputs) it can
cost more than it saves. For the same minibatches of each task, this script times, side by side in one run,
with graphs as the runs use them (each shape captured before timing, the captures counted), the values taking
turns in each of --repeats rounds, in a rotating order, each minibatch staged once a pass as in a run (the
median is reported):
  - the two forwards of a zeroth-order step (the loss of the minibatch twice, no gradient, as SPSA does);
  - the forward and backward of a first-order step with a LoRA adapter (FO-PEFT, Bilevel's φ and z);
and prints the padded tokens per real token and each time against one group's.

`--side-by-side N` asks the question of a sweep instead, whose runs share the GPU (under MPS, 16 at a time): N
processes of this script, process i on task i mod T (of --tasks' T) doing zeroth-order steps' forwards if
(i div T) is even, first-order steps if odd, all switching together from one value of --groups to the next every
--seconds, for --rounds rounds in turn. It prints each task's and kind's steps/s (the sum over its processes, the
median over a value's rounds) against one group's, and the work done: the steps weighted by what each costs in
one group (padded tokens, x2 for a ZO step's two forwards, x3 for a forward and backward), against one group's.

    python benchmarks/length_groups.py --tasks cb,rte,sst2,copa --groups 1,2,3,4     # on the GPU, real SmolLM2
    python benchmarks/length_groups.py --model tiny-llama --device cpu --batches 2 --tasks rte --groups 1,2
    python benchmarks/length_groups.py --side-by-side 16 --groups 1,2 --seconds 20 --rounds 6   # as a sweep runs
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from zofo.adapters import with_adapters  # noqa: E402
from zofo.batches import GroupedBatch, MinibatchSampler  # noqa: E402
from zofo.calls import model_calls  # noqa: E402
from zofo.config import AdapterConfig, make_config  # noqa: E402
from zofo.data import prepare_task  # noqa: E402
from zofo.models import load_model, load_tokenizer  # noqa: E402


def padded_tokens(batch) -> int:
    """Tokens the model computes for this batch: each (group's) batch at its bucketed shape."""
    groups = batch.groups if isinstance(batch, GroupedBatch) else [batch]
    return sum(shape.rows * shape.length for shape in (group.shape.bucketed() for group in groups))


def real_tokens(examples) -> int:
    """Tokens of the rows a batch of `examples` holds before padding: a row per option, one where they share it."""
    return sum(len(example.options[0][0]) if example.shared else sum(len(c) + len(k) for c, k in example.options)
               for example in examples)


def timed(function, batches, device) -> float:
    """Seconds per batch of one pass."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for batch in batches:
        function(batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / len(batches)


READY_SECONDS = 300  # --side-by-side: what loading the model and capturing the graphs may take in all processes
KINDS = ("forward", "first_order")  # a zeroth-order step's two forwards; a first-order step's forward and backward
FORWARDS = {"forward": 2, "first_order": 3}  # what a step of each kind costs, in forwards of its padded tokens


def load(args):
    """(device, config, tokenizer, model with a LoRA adapter): the model's values do not change its speed."""
    device = torch.device(args.device)
    config = make_config({"model": args.model, "device": args.device, "tf32": args.tf32, "peft": "lora"})
    tokenizer = load_tokenizer(args.model)
    model, _ = load_model(args.model, "fp32", args.device, seed=0)
    return device, config, tokenizer, with_adapters(model, AdapterConfig(peft="lora"), ["default"], seed=0)


def prepare(args, task: str, groups: list[int], config, tokenizer, device):
    """A task's --batches minibatches, padded for each value of `groups`, each value with model calls of its own
    (its graphs, its captures): (data, minibatches, {value: batches}, {value: calls})."""
    data = prepare_task(make_config({"model": args.model, "task": task, "n_train": 1000, "n_val": 1, "n_test": 1}),
                        tokenizer)
    sampler = MinibatchSampler(len(data.train), args.batch_size, seed=0)
    minibatches = [[data.train[i] for i in sampler.next()] for _ in range(args.batches)]
    batches, calls_of = {}, {}
    for value in groups:
        data.length_groups = value
        batches[value] = [data.batch(examples) for examples in minibatches]
        calls_of[value] = model_calls(config, device, tokenizer.pad_token_id)
    return data, minibatches, batches, calls_of


def step_functions(model, data) -> dict:
    def forward(batch):  # a ZO step's two evaluations of its minibatch, no adapter
        with model.disable_adapter():
            data.batch_loss(model, batch)
            data.batch_loss(model, batch)

    def first_order(batch):
        data.calls.backward(model, batch, data.loss_name)
        model.zero_grad(set_to_none=False)

    return {"forward": forward, "first_order": first_order}


def alone(args, groups: list[int]) -> int:
    """Each task's values timed in turns in this one process."""
    device, config, tokenizer, model = load(args)
    mode = "graphs" if config.uses_graphs(device) else "eager"
    print(f"{args.model} on {device} ({'TF32' if args.tf32 else 'fp32'}, model calls: {mode}); "
          f"{args.batches} minibatches of {args.batch_size} per task, {args.repeats} timed rounds")
    for task in args.tasks.split(","):
        data, minibatches, batches, calls_of = prepare(args, task, groups, config, tokenizer, device)
        real = sum(map(real_tokens, minibatches))
        steps = step_functions(model, data)
        # a first pass of each captures every shape (counted, as a run pays it once); then timed passes, the
        # values taking turns within each round so that drift affects all alike; the median of the rounds
        timings = {value: {kind: [] for kind in KINDS} for value in groups}
        for value in groups:
            data.calls = calls_of[value]
            for kind in KINDS:
                timed(steps[kind], batches[value], device)
        for round_ in range(args.repeats):
            for value in groups[round_ % len(groups):] + groups[: round_ % len(groups)]:  # each round another order
                data.calls = calls_of[value]
                for kind in KINDS:
                    data.calls._staged.clear()  # each minibatch padded and pinned once per pass, as in a run
                    timings[value][kind].append(timed(steps[kind], batches[value], device))
        results = {value: {"task": task, "length_groups": value, "tf32": args.tf32,
                           "padded_per_real_token": sum(map(padded_tokens, batches[value])) / real,
                           "forward_ms": 1e3 * statistics.median(timings[value]["forward"]),
                           "first_order_ms": 1e3 * statistics.median(timings[value]["first_order"]),
                           "captures": calls_of[value].captures,
                           "capture_seconds": round(calls_of[value].capture_seconds, 2)}
                   for value in groups}
        reference = results[1]
        for value, row in results.items():
            print(f"{task}: {value} group(s): {row['padded_per_real_token']:.2f} padded tokens per real one; "
                  f"ZO step's two forwards {row['forward_ms']:.1f} ms ({reference['forward_ms'] / row['forward_ms']:.2f} "
                  f"x one group's speed), first-order step {row['first_order_ms']:.1f} ms "
                  f"({reference['first_order_ms'] / row['first_order_ms']:.2f} x); {row['captures']} graphs captured "
                  f"in {row['capture_seconds']:.1f} s")
            write(args.output, row)
    return 0


def worker(args, groups: list[int]) -> int:
    """Process --worker of a --side-by-side measurement: its task and kind of step, timed round by round on the
    schedule that the file `go` in --rendezvous starts (every process switches values at the same moments)."""
    tasks = args.tasks.split(",")
    task, kind = tasks[args.worker % len(tasks)], KINDS[(args.worker // len(tasks)) % len(KINDS)]
    device, config, tokenizer, model = load(args)
    data, _, batches, calls_of = prepare(args, task, groups, config, tokenizer, device)
    step = step_functions(model, data)[kind]
    for value in groups:  # every shape captured before the clock starts
        data.calls = calls_of[value]
        timed(step, batches[value], device)
    rendezvous = Path(args.rendezvous)
    (rendezvous / f"ready-{args.worker}").touch()
    parent, give_up = os.getppid(), time.time() + READY_SECONDS + 60
    while not (rendezvous / "go").exists():  # the parent gone, or no start in time: end, holding no GPU memory
        if os.getppid() != parent or time.time() > give_up:
            sys.exit(f"side by side: process {args.worker} was not started (its parent ended or gave up)")
        time.sleep(0.05)
    start = float((rendezvous / "go").read_text())
    rates = {value: [] for value in groups}
    for round_ in range(args.rounds):
        value = groups[round_ % len(groups)]
        begin, end = start + round_ * args.seconds, start + (round_ + 1) * args.seconds
        time.sleep(max(0.0, begin - time.time()))
        data.calls, done = calls_of[value], 0
        begin = max(begin, time.time())  # a step of the round before may have run past its end
        while done == 0 or time.time() < end:  # one step at least; one begun before the end finishes
            if done % len(batches[value]) == 0:
                data.calls._staged.clear()  # each minibatch padded and pinned once per pass, as in a run
            step(batches[value][done % len(batches[value])])
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # a run reads its loss every step
            done += 1
        rates[value].append(done / (time.time() - begin))
    result = {"task": task, "kind": kind,
              "steps_per_second": {str(v): statistics.median(r) for v, r in rates.items()},
              "one_group_tokens": statistics.mean(map(padded_tokens, batches[1]))}  # what a step costs in one group
    (rendezvous / f"result-{args.worker}.json").write_text(json.dumps(result))
    return 0


def side_by_side(args, groups: list[int]) -> int:
    """--side-by-side N: N worker processes timed together; their rates summed by task and kind of step."""
    n = args.side_by_side
    with tempfile.TemporaryDirectory(prefix="length-groups-") as folder:
        rendezvous = Path(folder)
        # each process gets this one's arguments (--worker makes it time and report, not launch or write)
        command = [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:], "--rendezvous", folder]
        workers = [subprocess.Popen(command + ["--worker", str(i)]) for i in range(n)]
        try:
            deadline = time.time() + READY_SECONDS
            while len(list(rendezvous.glob("ready-*"))) < n:
                failed = [i for i, w in enumerate(workers) if w.poll() not in (None, 0)]
                if failed:
                    sys.exit(f"side by side: process {failed[0]} failed before the timing began (exit "
                             f"{workers[failed[0]].returncode}; its error is above)")
                if time.time() > deadline:
                    sys.exit(f"side by side: {n - len(list(rendezvous.glob('ready-*')))} of {n} processes were not "
                             f"ready (model loaded, graphs captured) after {READY_SECONDS} s")
                time.sleep(0.2)
            (rendezvous / "go.part").write_text(str(time.time() + 1.0))
            (rendezvous / "go.part").rename(rendezvous / "go")
            ends = time.time() + 1.0 + args.rounds * args.seconds + READY_SECONDS  # a step may not outlast that
            try:
                failed = [i for i, w in enumerate(workers) if w.wait(timeout=max(1.0, ends - time.time())) != 0]
            except subprocess.TimeoutExpired:
                sys.exit(f"side by side: a process had not ended {READY_SECONDS} s after its last round")
            if failed:
                sys.exit(f"side by side: process {failed[0]} failed (exit {workers[failed[0]].returncode})")
            results = [json.loads((rendezvous / f"result-{i}.json").read_text()) for i in range(n)]
        finally:
            for w in workers:
                if w.poll() is None:
                    w.kill()
                    w.wait()  # its CUDA context gone before this script ends
    print(f"{args.model} on {args.device} ({'TF32' if args.tf32 else 'fp32'}), {n} processes side by side, "
          f"{args.rounds} rounds of {args.seconds:g} s, the values of --groups in turn")
    cells: dict[tuple[str, str], list[dict]] = {}
    for result in results:
        cells.setdefault((result["task"], result["kind"]), []).append(result)
    for (task, kind), members in cells.items():
        rate = {v: sum(m["steps_per_second"][str(v)] for m in members) for v in groups}
        print(f"{task}, {kind.replace('_', '-')} steps ({len(members)} process{'es' if len(members) > 1 else ''}): " +
              "; ".join(f"{v} group(s) {rate[v]:.2f} steps/s ({rate[v] / rate[1]:.2f} x)" for v in groups))
        for v in groups:
            write(args.output, {"side_by_side": n, "task": task, "kind": kind, "processes": len(members),
                                "length_groups": v, "steps_per_second": round(rate[v], 4),
                                "speedup": round(rate[v] / rate[1], 4), "tf32": args.tf32})
    # the work done: each step weighted by what it costs in one group, so that fewer padded tokens count as a gain;
    # over all processes, and over each kind's alone (a sweep of mostly one kind of run gains what that kind does)
    for kind in (None, *KINDS):
        members = [r for r in results if kind in (None, r["kind"])]
        work = {v: sum(r["steps_per_second"][str(v)] * FORWARDS[r["kind"]] * r["one_group_tokens"] for r in members)
                for v in groups}
        print(f"work done{'' if kind is None else ' by ' + kind.replace('_', '-') + ' steps'} (steps weighted by their "
              "cost in one group): " + "; ".join(f"{v} group(s) {work[v] / work[1]:.2f} x" for v in groups))
        for v in groups:
            write(args.output, {"side_by_side": n, "length_groups": v, **({} if kind is None else {"kind": kind}),
                                "work_speedup": round(work[v] / work[1], 4), "tf32": args.tf32})
    return 0


def write(output: str | None, row: dict) -> None:
    if output:
        with open(output, "a") as f:
            f.write(json.dumps(row) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tasks", default="cb,rte,sst2,copa")
    parser.add_argument("--groups", default="1,2,3,4", help="comma-separated values of --length-groups, 1 among them")
    parser.add_argument("--batches", type=int, default=20, help="minibatches of each task")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds")
    parser.add_argument("--tf32", action="store_true", help="fp32 weights, TF32 matmuls")
    parser.add_argument("--output", help="append one JSON line per task and value here")
    parser.add_argument("--side-by-side", type=int, metavar="N", help="time N processes together, as a sweep runs")
    parser.add_argument("--seconds", type=float, default=20.0, help="--side-by-side: the length of a round")
    parser.add_argument("--rounds", type=int, default=6, help="--side-by-side: rounds, the values in turn")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # a --side-by-side process
    parser.add_argument("--rendezvous", help=argparse.SUPPRESS)
    args = parser.parse_args()
    groups = [int(g) for g in args.groups.split(",")]
    if 1 not in groups or min(groups) < 1:
        sys.exit("--groups: positive values, 1 among them (the reference)")
    if args.side_by_side is not None and (args.side_by_side < 1 or args.rounds < len(groups) or args.seconds <= 0):
        sys.exit("--side-by-side: at least 1 process, --seconds above 0 and --rounds at least the number of --groups")
    if args.worker is not None:
        return worker(args, groups)
    if args.side_by_side:
        return side_by_side(args, groups)
    return alone(args, groups)


if __name__ == "__main__":
    sys.exit(main())
