"""Does TF32 (or bf16) change what a training step sees, against fp32?

fp32 matmuls run at about 51 TFLOP/s on an H200 and a run of SmolLM2-135M is compute-bound there; fp32
weights with TF32 matmuls (`--tf32`) run them on tensor cores with 10-bit mantissas in the products, and
bf16 keeps the weights themselves (and every activation) in 7-bit mantissas. A zeroth-order step lives on a difference of two
losses, f(θ + εu) − f(θ − εu), about 2ε·|∇f·u|: this script measures whether that difference survives.

For the same minibatches and the same directions u (exact perturbation: θ ± εu written from a copy of θ),
each precision computes
  - the two-sided SPSA projected gradient g = [f(θ+εu) − f(θ−εu)] / 2ε, perturbing every base weight with
    the adapter attached (Bilevel ZOFO's upper level; MeZO on the full model perturbs the same weights, without
    an adapter) and perturbing the LoRA adapter (MeZO-LoRA);
  - the first-order gradient of the LoRA adapter (FO-LoRA, Bilevel ZOFO's lower level).
and prints, against fp32 (and fp32 against itself, measured again: the floor of the comparison, 0 where the
device repeats its arithmetic exactly): the relative RMS difference of g (a difference of 0.01 changes the step by 1 %,
while SPSA's own noise, the spread of g over u, is of the order of g itself), the share of directions whose
sign of g agrees, the loss's difference at θ against 2ε·|g| (the size of the signal), and the cosine of the
first-order gradients. Exits 1 if TF32's relative difference of g exceeds --tolerance.

    python benchmarks/precision_check.py --device cuda --tasks sst2,rte          # on the GPU, real SmolLM2
    python benchmarks/precision_check.py --model tiny-llama --device cpu --modes fp32,bf16 --directions 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from zofo.adapters import adapter_parameters, base_parameters, is_adapter_parameter, with_adapters  # noqa: E402
from zofo.config import make_config  # noqa: E402
from zofo.data import prepare_task  # noqa: E402
from zofo.losses import candidates_loss  # noqa: E402
from zofo.models import load_model  # noqa: E402
from zofo.zo import SPSA, ParameterSpace  # noqa: E402

MODES = ("fp32", "tf32", "bf16")
ADAPTER = "default"


def trained_like_adapter(model, seed: int) -> None:
    """LoRA's B starts at zero, where its A has no gradient and u·∇ over A is 0: give B small random values,
    as after some training, so that every adapter weight takes part."""
    generator = torch.Generator().manual_seed(seed)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            parameter.data.copy_(torch.randn(parameter.shape, generator=generator) * 0.01)


def projected_gradients(model, parameters, batches, seeds: list[int], eps: float) -> tuple[list[float], list[float]]:
    """g for every (batch, seed), and the loss at θ of every batch."""
    space = ParameterSpace(parameters, keep_origin=True)
    spsa = SPSA(space, eps=eps, perturbation="exact")
    values, losses = [], []
    with torch.no_grad():
        for batch in batches:
            losses.append(candidates_loss(model, batch).item())
            for seed in seeds:
                values.append(spsa.estimate(lambda: candidates_loss(model, batch), seed).scalars[0])
                space.restore()
    return values, losses


def lora_gradient(model, batches) -> torch.Tensor:
    """The adapter's gradient of the mean loss over the batches, flattened."""
    parameters = adapter_parameters(model, ADAPTER)
    for p in parameters:
        p.grad = None
    for batch in batches:
        (candidates_loss(model, batch) / len(batches)).backward()
    return torch.cat([p.grad.flatten().float() for p in parameters])


def measure(model, batches, seeds, eps) -> dict:
    full, losses = projected_gradients(model, base_parameters(model), batches, seeds, eps)
    adapter = [(n, p) for n, p in model.named_parameters() if is_adapter_parameter(model, n)]
    lora, _ = projected_gradients(model, adapter, batches, seeds, eps)
    return {"full": full, "lora": lora, "losses": losses, "gradient": lora_gradient(model, batches).cpu()}


def compare(reference: list[float], values: list[float]) -> dict:
    ref, val = torch.tensor(reference, dtype=torch.float64), torch.tensor(values, dtype=torch.float64)
    return {"rel_rms": ((val - ref).norm() / ref.norm()).item(),
            "sign_agreement": (val.sign() == ref.sign()).double().mean().item(),
            "median_abs_g": ref.abs().median().item()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tasks", default="sst2,rte", help="comma-separated: short and long inputs")
    parser.add_argument("--modes", default="fp32,tf32,bf16", help=f"comma-separated, fp32 among them: {', '.join(MODES)}")
    parser.add_argument("--batches", type=int, default=4, help="minibatches of --batch-size training examples")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--directions", type=int, default=16, help="directions u per minibatch")
    parser.add_argument("--eps", type=float, default=1e-3)
    parser.add_argument("--tolerance", type=float, default=0.05, help="largest TF32 relative RMS difference of g accepted")
    parser.add_argument("--output", help="append one JSON line per task and mode here")
    args = parser.parse_args()
    requested = args.modes.split(",")
    if "fp32" not in requested or not set(requested) <= set(MODES):
        parser.error(f"--modes: fp32 (the reference) and any of {', '.join(MODES[1:])}; got {args.modes}")
    modes = [mode for mode in MODES if mode in requested]  # bf16 last: it rounds the weights
    if "tf32" in modes and not args.device.startswith("cuda"):
        parser.error("tf32 is a CUDA matmul mode: use --device cuda, or leave tf32 out of --modes")

    failed = False
    seeds = list(range(1, args.directions + 1))
    for task in args.tasks.split(","):
        config = make_config({"task": task, "model": args.model, "n_train": args.batches * args.batch_size, "n_val": 1,
                              "n_test": 1, "seed": 0})
        model, tokenizer = load_model(args.model, "fp32", args.device)
        data = prepare_task(config, tokenizer)
        batches = [data.batch(data.train[i:i + args.batch_size]).to(model.device)
                   for i in range(0, args.batches * args.batch_size, args.batch_size)]
        model = with_adapters(model, config.adapter, [ADAPTER], seed=0)
        trained_like_adapter(model, seed=0)
        tokens = sum(int(b.attention_mask.sum()) for b in batches) // len(batches)
        print(f"{task}: {len(batches)} minibatches of {args.batch_size} examples ({tokens} tokens each on average), "
              f"{args.directions} directions each, ε = {args.eps:g}")
        results = {}
        for mode in ["fp32", "fp32-again"] + modes[1:]:
            torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
            model.to(torch.bfloat16 if mode == "bf16" else torch.float32)
            results[mode] = measure(model, batches, seeds, args.eps)
        torch.backends.cuda.matmul.allow_tf32 = False
        reference = results["fp32"]
        for mode in ["fp32-again"] + modes[1:]:
            result = results[mode]
            row = {"task": task, "mode": mode, "model": args.model, "device": args.device, "eps": args.eps,
                   "directions": len(result["full"]),
                   "full": compare(reference["full"], result["full"]),
                   "lora": compare(reference["lora"], result["lora"]),
                   "loss_difference": statistics.mean(abs(a - b) for a, b in zip(reference["losses"], result["losses"])),
                   "gradient_cosine": torch.nn.functional.cosine_similarity(  # float64: exact to 1e-12 at 1.0
                       reference["gradient"].double(), result["gradient"].double(), dim=0).item()}
            for target in ("full", "lora"):
                signal = 2 * args.eps * row[target]["median_abs_g"]  # f(θ+εu) − f(θ−εu) = 2ε·g
                print(f"  {mode} against fp32, ZO on {target:4}: g's relative RMS difference "
                      f"{row[target]['rel_rms']:.4f}, same sign {row[target]['sign_agreement']:.1%}, median |g| "
                      f"{row[target]['median_abs_g']:.3g} (2ε·|g| = {signal:.2e}; the loss at θ differs from fp32's by "
                      f"{row['loss_difference']:.2e})")
            print(f"  {mode} against fp32, first-order LoRA gradient: cosine {row['gradient_cosine']:.6f}")
            if mode == "tf32" and max(row["full"]["rel_rms"], row["lora"]["rel_rms"]) > args.tolerance:
                failed = True
            if args.output:
                with open(args.output, "a") as handle:
                    handle.write(json.dumps(row) + "\n")
    if failed:
        print(f"FAIL: TF32 changes g by more than {args.tolerance:.0%} (relative RMS)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
