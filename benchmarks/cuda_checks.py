"""Checks of the zeroth-order engine on a CUDA device, where the fused Triton kernel runs compiled (the
test suite runs it in Triton's interpreter on the CPU). Prints one line per check; exits 1 if any fails.

    python benchmarks/cuda_checks.py
    TRITON_INTERPRET=1 python benchmarks/cuda_checks.py     # a dry run on the CPU, through the interpreter
"""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

sys.path.insert(0, str(Path(__file__).resolve().parent))

from zofo.models import byte_tokenizer, tiny_config  # noqa: E402
from zofo.tasks import get_task  # noqa: E402
from zofo.zo import SPSA, ZOAdam, ZOSGD, ParameterSpace, kernels  # noqa: E402
from zofo.zo.space import name_key  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    sys.exit("no CUDA device: run with TRITON_INTERPRET=1 for a dry run on the CPU")
failures = []


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}")
    if not ok:
        failures.append(name)


def model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    with torch.device(DEVICE):
        return AutoModelForCausalLM.from_config(tiny_config("tiny-llama", byte_tokenizer()), dtype=dtype).eval()


def by_name(space, seed):
    return {s.name: space.direction(seed, s) for s in space.segments}


m = model()
alone = ParameterSpace(m.named_parameters(), pack=False, kernel="triton")
check("the fused kernel runs", alone.kernel == "triton", alone.directions)
reference = by_name(alone, 5)
for label, space in (("one bucket", ParameterSpace(m.named_parameters(), kernel="triton")),
                     ("small buckets", ParameterSpace(m.named_parameters(), bucket_numel=20_000, kernel="triton")),
                     ("reversed order", ParameterSpace(list(m.named_parameters())[::-1], kernel="triton"))):
    same = all(torch.equal(u, reference[name]) for name, u in by_name(space, 5).items())
    check(f"u of each parameter is the same packed as {label}", same)

big = torch.nn.Parameter(torch.zeros(5 * kernels.GROUP + 123, device=DEVICE))  # unaligned slices below
space = ParameterSpace([("w", big)], kernel="triton")
whole = space.direction(9, space.segments[0])
slices = all(torch.equal(space.direction(9, space.segments[0], a, b), whole[a : a + b])
             for a, b in ((0, 5), (kernels.GROUP - 7, 20), (3000, 9000), (len(whole) - 500, 500)))
check("a slice drawn alone equals the slice of the whole", slices)
check("u is standard normal", abs(whole.mean().item()) < 0.02 and abs(whole.std().item() - 1) < 0.02,
      f"mean {whole.mean().item():.4f}, std {whole.std().item():.4f}")

space = ParameterSpace(m.named_parameters(), bucket_numel=40_000, kernel="triton")
theta = torch.cat([space.view(s).clone() for s in space.segments])
u = torch.cat(list(by_name(space, 11).values()))
space.add_direction(11, 0.25)
after = torch.cat([space.view(s).clone() for s in space.segments])
error = (theta + 0.25 * u - after).abs().max().item()
check("a fused pass adds exactly the direction drawn", error < 1e-6, f"max error {error:.1e}")

if kernels.FAST_MATH:  # compiled on a GPU; the interpreter draws the exact transform only
    n = 1 << 24
    launch = kernels.Launch.of([(0, name_key("x"), 0, n)], DEVICE)
    exact = torch.empty(n, device=DEVICE)
    kernels._gaussian[(launch.table.shape[0],)](exact, launch.table, 123, BLOCK=kernels.BLOCK, ROUNDS=kernels.ROUNDS,
                                                FAST_MATH=False, ALIGNED=True, num_warps=kernels.WARPS)
    fast = kernels.gaussian_(torch.empty(n, device=DEVICE), launch, 123)
    # The approximate Box-Muller draws the same Philox bits with the angle shifted by π: fast = −exact.
    diff = (fast + exact).abs().max().item()
    check("approximate Box-Muller against the exact one", diff < 2e-4,
          f"max abs diff {diff:.2e}, kurtosis {(fast ** 4).mean().item():.3f}")

ids = torch.randint(0, 250, (4, 32), device=DEVICE)
for optimizer in (ZOSGD, ZOAdam):
    trained = model(seed=1)
    objective = lambda: trained(input_ids=ids, labels=ids).loss
    space = ParameterSpace(trained.named_parameters(), bucket_numel=30_000, kernel="triton")
    spsa, opt = SPSA(space, 1e-3), optimizer(space, 1e-3)
    records = []
    for step in range(5):
        estimate = spsa.estimate(objective, step)
        opt.step(estimate)
        records.append(estimate)
    fresh = model(seed=1)
    other = ParameterSpace(list(fresh.named_parameters())[::-1], pack=False, kernel="triton")
    spsa2, opt2 = SPSA(other, 1e-3), optimizer(other, 1e-3)
    for step, estimate in enumerate(records):
        opt2.step(spsa2.replay(step, estimate.scalars))
    identical = all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), fresh.state_dict().values()))
    check(f"{optimizer.__name__}: a replay onto another packing is bit-identical (fp32)", identical)

# --- exact perturbation: the fused pass from the kept copy of θ leaves no round-off --------------------
for dtype in (torch.float32, torch.bfloat16, torch.float16):
    trained = model(seed=2, dtype=dtype)
    before = [p.clone() for p in trained.parameters()]
    space = ParameterSpace(trained.named_parameters(), bucket_numel=30_000, kernel="triton", keep_origin=True)
    spsa, opt = SPSA(space, 1e-3, perturbation="exact"), ZOSGD(space, 0.0)
    for step in range(20):
        opt.step(spsa.estimate(lambda: trained(input_ids=ids, labels=ids).loss, step))
    same = all(torch.equal(a.view(torch.uint8), p.view(torch.uint8)) for a, p in zip(before, trained.parameters()))
    check(f"exact perturbation, lr 0, 20 steps: {dtype} weights bit-identical", same)

# --- CUDA graphs: every method trains as it does eagerly ----------------------------------------------
if DEVICE == "cuda":
    from zofo.calls import ModelCalls  # noqa: E402
    from zofo.config import make_config  # noqa: E402
    from zofo.data import TaskData, TaskSet  # noqa: E402
    from zofo.methods import METHODS  # noqa: E402
    from zofo.zo import Trajectory  # noqa: E402
    import tempfile  # noqa: E402

    from graphs import varied_examples  # noqa: E402

    examples = varied_examples(250, 48, seed=0)
    COMPILED = {("fo", "lora"), ("mezo", "none"), ("mezo", "prompt"), ("bilevel", "lora"), ("bilevel", "prefix")}
    # length_groups 3: every pair that Table 2's runs may use it with (gpu_next_lease.sh's side-by-side rule)
    GROUPED = {("fo", "lora"), ("fo", "prefix"), ("fo", "prompt"), ("mezo", "none"), ("mezo", "prefix"),
               ("mezo", "prompt"), ("bilevel", "lora"), ("bilevel", "prefix"), ("bilevel", "prompt"), ("two-stage", "lora")}
    folder = Path(tempfile.mkdtemp())
    for method, peft in (("fo", "lora"), ("fo", "prefix"), ("fo", "prompt"), ("mezo", "none"), ("mezo", "lora"),
                         ("mezo", "prefix"), ("mezo", "prompt"), ("bilevel", "lora"), ("bilevel", "prefix"),
                         ("bilevel", "prompt"), ("two-stage", "lora")):
        config = make_config(dict(method=method, peft=peft, model="tiny-llama", batch_size=4, lr=1e-3, bilevel_k=2,
                                  steps=12, zo_eps=1e-2, device="cuda"))
        logs, captures = {}, {}
        # torch.compile inside the graphs for a few methods (each compile takes seconds even for a tiny model)
        modes = ("eager", "graphs") + (("compiled",) if (method, peft) in COMPILED else ()) + \
                (("grouped",) if (method, peft) in GROUPED else ())
        for mode in modes:
            calls = ModelCalls("graphs" if mode in ("compiled", "grouped") else mode, pad_id=0, compile=mode == "compiled")
            data = TaskData(task=get_task("copa"), train=examples[:32], validation=examples[32:], test=examples[32:],
                            metadata={}, loss_name="candidates", pad_id=0, calls=calls,
                            length_groups=3 if mode == "grouped" else 1)
            trained = METHODS[method](model(seed=3), TaskSet([data]), config, Trajectory(folder / f"{method}-{peft}-{mode}.jsonl"))
            trained.begin()
            losses = [float(v) for i in range(len(trained.schedule())) for v in trained.step(i).values()]
            logs[mode] = losses + [data.validation_loss(trained.model)]
            captures[mode] = calls.captures
        for mode in modes[1:]:
            diff = max(abs(a - b) for a, b in zip(logs["eager"], logs[mode]))
            check(f"{mode}: {method} {peft}: the same {len(logs['eager'])} losses as eager", diff < 1e-3,
                  f"max |diff| {diff:.1e}, {captures[mode]} graphs captured")

    # A run captures, then packs θ (the parameters move: new graphs), then drops every graph to rebuild
    # its selected step and captures again, into a new memory pool.
    calls = ModelCalls("graphs", pad_id=0)
    data = TaskData(task=get_task("copa"), train=examples, validation=examples, test=examples, metadata={},
                    loss_name="candidates", pad_id=0, calls=calls)
    eager = TaskData(task=get_task("copa"), train=examples, validation=examples, test=examples, metadata={},
                     loss_name="candidates", pad_id=0)
    m = model(seed=4)
    reference = eager.loss(m, examples[:5]).item()
    values = [data.loss(m, examples[:5]).item()]
    ParameterSpace(m.named_parameters(), bucket_numel=30_000, kernel="triton")
    values.append(data.loss(m, examples[:5]).item())
    calls.clear()
    values.append(data.loss(m, examples[:5]).item())
    check("graphs: captured again after θ is packed and after clear()", calls.captures == 3 and
          max(abs(v - reference) for v in values) < 1e-5, f"{calls.captures} captures, losses {values} vs {reference}")

print(f"{len(failures)} failed" if failures else "all checks passed")
sys.exit(1 if failures else 0)
