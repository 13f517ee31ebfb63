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

    python benchmarks/length_groups.py --tasks cb,rte,sst2,copa --groups 1,2,3,4     # on the GPU, real SmolLM2
    python benchmarks/length_groups.py --model tiny-llama --device cpu --batches 2 --tasks rte --groups 1,2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
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
    args = parser.parse_args()
    groups = [int(g) for g in args.groups.split(",")]
    if 1 not in groups or min(groups) < 1:
        sys.exit("--groups: positive values, 1 among them (the reference)")
    device = torch.device(args.device)
    config = make_config({"model": args.model, "device": args.device, "tf32": args.tf32, "peft": "lora"})
    tokenizer = load_tokenizer(args.model)
    model, _ = load_model(args.model, "fp32", args.device, seed=0)
    model = with_adapters(model, AdapterConfig(peft="lora"), ["default"], seed=0)
    mode = "graphs" if config.uses_graphs(device) else "eager"
    print(f"{args.model} on {device} ({'TF32' if args.tf32 else 'fp32'}, model calls: {mode}); "
          f"{args.batches} minibatches of {args.batch_size} per task, {args.repeats} timed rounds")
    for task in args.tasks.split(","):
        data = prepare_task(make_config({"model": args.model, "task": task, "n_train": 1000, "n_val": 1, "n_test": 1}),
                            tokenizer)  # its model calls: each value's own, below
        sampler = MinibatchSampler(len(data.train), args.batch_size, seed=0)
        minibatches = [[data.train[i] for i in sampler.next()] for _ in range(args.batches)]
        real = sum(map(real_tokens, minibatches))
        batches, calls_of = {}, {}
        for value in groups:  # each value its own model calls: its graphs, its captures
            data.length_groups = value
            batches[value] = [data.batch(examples) for examples in minibatches]
            calls_of[value] = model_calls(config, device, tokenizer.pad_token_id)

        def forward(batch):  # a ZO step's two evaluations of its minibatch, no adapter
            with model.disable_adapter():
                data.batch_loss(model, batch)
                data.batch_loss(model, batch)

        def first_order(batch):
            data.calls.backward(model, batch, data.loss_name)
            model.zero_grad(set_to_none=False)

        # a first pass of each captures every shape (counted, as a run pays it once); then timed passes, the
        # values taking turns within each round so that drift affects all alike; the median of the rounds
        timings = {value: {"forward": [], "first_order": []} for value in groups}
        for value in groups:
            data.calls = calls_of[value]
            for function in (forward, first_order):
                timed(function, batches[value], device)
        for round_ in range(args.repeats):
            for value in groups[round_ % len(groups):] + groups[: round_ % len(groups)]:  # each round another order
                data.calls = calls_of[value]
                for kind, function in (("forward", forward), ("first_order", first_order)):
                    data.calls._staged.clear()  # each minibatch padded and pinned once per pass, as in a run
                    timings[value][kind].append(timed(function, batches[value], device))
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
            if args.output:
                with open(args.output, "a") as f:
                    f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
