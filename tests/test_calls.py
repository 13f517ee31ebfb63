"""Model calls at static shapes (calls.py): what CUDA graphs replay, checked on the CPU.

Mode "static" pads every batch to its bucketed shape exactly as mode "graphs" does before capture, and
runs eagerly; so these tests check that padding changes no loss, score or gradient, and that every method
trains the same with it. The capture itself needs CUDA: benchmarks/graphs.py checks it on a GPU."""

import pytest
import torch

from zofo.batches import BatchShape, bucket, option_batch
from zofo.calls import ModelCalls, _scores
from zofo.config import make_config
from zofo.data import prepare_tasks
from zofo.errors import ConfigError
from zofo.losses import example_losses, loss_function
from zofo.methods import METHODS
from zofo.zo import Trajectory

from conftest import tiny

TOLERANCE = dict(atol=2e-5, rtol=2e-5)  # fp32: padding changes only the order of some sums


def test_buckets_are_few_and_waste_under_a_quarter():
    assert [bucket(n) for n in (1, 7, 8, 9, 11, 16, 17, 33, 100)] == [1, 7, 8, 10, 12, 16, 20, 40, 112]
    assert all(n <= bucket(n) < 1.25 * n + 1 for n in range(1, 5000))
    assert len({bucket(n) for n in range(1, 513)}) == 32
    shape = BatchShape(rows=13, length=37, options=26, kept=3, examples=13, slots=2).bucketed()
    assert shape == BatchShape(rows=14, length=40, options=28, kept=3, examples=14, slots=2)
    assert BatchShape(1, 5, 1, 1, 1, 1).bucketed().length == 16  # lengths: multiples of 8, at least 16


def task_batches(task, data_dir, n=6):
    config = make_config(dict(model="tiny-llama", task=task, data_dir=str(data_dir), n_train=n, n_val=4, n_test=4,
                              max_length=100))
    model, tokenizer = tiny()
    data = prepare_tasks(config, tokenizer).single
    return model, data


@pytest.mark.parametrize("task, loss", [("sst2", "candidates"), ("copa", "candidates"), ("copa", "lm"),
                                        ("record", "candidates"), ("record", "lm"), ("boolq", "lm")])
def test_padding_changes_no_loss_score_or_gradient(data_dir, task, loss):
    from zofo.adapters import with_adapters
    from zofo.config import AdapterConfig

    model, data = task_batches(task, data_dir)
    model = with_adapters(model, AdapterConfig(peft="lora"), ["default"], seed=0)
    for p in model.parameters():
        if p.requires_grad:  # LoRA B starts at 0: give the adapter a gradient of its own
            torch.nn.init.normal_(p, std=0.05)
    examples = data.train[:5]
    batch = option_batch(examples, data.pad_id, gold_only=loss == "lm")
    eager, static = ModelCalls("eager"), ModelCalls("static", pad_id=data.pad_id)
    assert batch.shape.bucketed() != batch.shape or task == "sst2"

    values, weights = eager.losses(model, batch, loss)
    padded_values, padded_weights = static.losses(model, batch, loss)
    n = len(examples)
    torch.testing.assert_close(padded_values[:n], values, **TOLERANCE)
    torch.testing.assert_close(padded_weights[:n], weights)
    assert padded_values[n:].abs().sum() == 0 and padded_weights[n:].sum() == 0
    if loss == "candidates":
        torch.testing.assert_close(static.scores(model, batch), eager.scores(model, batch), **TOLERANCE)

    trainable = [p for p in model.parameters() if p.requires_grad]
    grads = {}
    for name, calls in (("eager", eager), ("static", static)):
        for p in trainable:
            p.grad = None
        mean = calls.backward(model, batch, loss, scale=3.0)
        grads[name] = (mean, [p.grad.clone() for p in trainable])
    torch.testing.assert_close(grads["static"][0], grads["eager"][0], **TOLERANCE)
    reference = loss_function(loss)(model, batch.padded(batch.shape.bucketed(), data.pad_id))
    torch.testing.assert_close(grads["static"][0], reference.detach(), **TOLERANCE)
    for g_static, g_eager in zip(grads["static"][1], grads["eager"][1]):
        assert g_eager.abs().sum() > 0
        torch.testing.assert_close(g_static, g_eager, atol=1e-5, rtol=1e-4)


def test_backward_accumulates_into_existing_gradients(data_dir):
    model, data = task_batches("sst2", data_dir)
    model.requires_grad_(False).lm_head.weight.requires_grad_(True)
    batch = data.batch(data.train[:3])
    calls = ModelCalls("static", pad_id=data.pad_id)
    calls.backward(model, batch, data.loss_name)
    once = model.lm_head.weight.grad.clone()
    calls.backward(model, batch, data.loss_name, scale=2.0)
    torch.testing.assert_close(model.lm_head.weight.grad, 3 * once, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method, peft", [("fo", "lora"), ("fo", "prompt"), ("fo", "prefix"), ("mezo", "none"),
                                          ("mezo", "lora"), ("mezo", "prompt"), ("bilevel", "lora"),
                                          ("bilevel", "prefix"), ("two-stage", "lora")])
def test_every_method_trains_the_same_at_static_shapes(data_dir, tmp_path, method, peft):
    """Three iterations of each method, eagerly and at padded static shapes: the same logged losses and the
    same validation loss, to float tolerance."""
    config = make_config(dict(model="tiny-llama", task="copa", data_dir=str(data_dir), n_train=24, n_val=6,
                              n_test=4, batch_size=3, device="cpu", method=method, peft=peft, lr=1e-3,
                              bilevel_k=1, steps=6, zo_eps=1e-2))
    logs = {}
    for mode in ("eager", "static"):
        model, tokenizer = tiny()
        tasks = prepare_tasks(config, tokenizer, calls=ModelCalls(mode, pad_id=tokenizer.pad_token_id))
        trained = METHODS[method](model, tasks, config, Trajectory(tmp_path / f"{mode}.jsonl"))
        trained.begin()
        steps = [trained.step(i) for i in range(3)]
        logs[mode] = ([float(v) for log in steps for v in log.values()], tasks.validation_loss(trained.model))
    assert logs["static"][0] == pytest.approx(logs["eager"][0], rel=1e-4, abs=1e-4)
    assert logs["static"][1] == pytest.approx(logs["eager"][1], rel=1e-4, abs=1e-5)


def test_graphs_on_without_cuda_is_refused_before_any_loading():
    config = make_config(dict(graphs="on", device="cpu"))
    with pytest.raises(ConfigError, match="--graphs on needs a CUDA device"):
        config.uses_graphs(torch.device("cpu"))
    assert not make_config({}).uses_graphs(torch.device("cpu"))  # auto: off on the CPU
    assert make_config({}).uses_graphs(torch.device("cuda"))  # and on for CUDA
    assert not make_config(dict(graphs="off")).uses_graphs(torch.device("cuda"))
    with pytest.raises(ConfigError, match="per-module"):
        make_config(dict(graphs="on", zo_perturbation="per-module"))
    assert not make_config(dict(zo_perturbation="per-module")).uses_graphs(torch.device("cuda"))


def test_compile_and_tf32_are_refused_where_they_cannot_apply():
    with pytest.raises(ConfigError, match="--compile compiles the calls that CUDA graphs capture"):
        make_config(dict(compile=True)).uses_graphs(torch.device("cpu"))
    with pytest.raises(ConfigError, match="drop --graphs off"):
        make_config(dict(compile=True, graphs="off"))
    assert make_config(dict(compile=True)).uses_graphs(torch.device("cuda"))
    with pytest.raises(ConfigError, match="--tf32 is a matmul mode for fp32 weights"):
        make_config(dict(tf32=True, dtype="bf16"))


def test_a_model_that_names_no_blocks_has_each_call_compiled_whole(data_dir):
    model, data = task_batches("sst2", data_dir)
    batch = data.batch(data.train[:5])
    reference = ModelCalls("static", pad_id=data.pad_id).losses(model, batch, "candidates")[0]
    reference_scores = ModelCalls("static", pad_id=data.pad_id).scores(model, batch)
    for module in model.modules():  # model classes that do not say what their blocks are
        if hasattr(module, "_no_split_modules"):
            module._no_split_modules = None
    compiled = ModelCalls("static", pad_id=data.pad_id, compile=True)
    torch.testing.assert_close(compiled.losses(model, batch, "candidates")[0], reference, **TOLERANCE)
    torch.testing.assert_close(compiled.scores(model, batch), reference_scores, **TOLERANCE)  # a second call
    assert list(compiled._compiled) == [example_losses, _scores]  # each call itself, compiled
    assert all(getattr(m, "_compiled_call_impl", None) is None for m in model.modules())


def test_compiled_calls_give_the_eager_losses_scores_and_gradients(data_dir):
    """torch.compile (inductor, here its CPU code) of the model's decoder layers inside the static calls: the
    same values to fp32 tolerance, with the adapter switched off and on (a recompile, not a stale graph).
    Compiling changes the model's layers in place, so every eager value is taken first."""
    from zofo.adapters import with_adapters
    from zofo.calls import repeated_blocks
    from zofo.config import AdapterConfig

    model, data = task_batches("sst2", data_dir)
    model = with_adapters(model, AdapterConfig(peft="lora"), ["default"], seed=0)
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    batch = data.batch(data.train[:5])
    eager, compiled = ModelCalls("static", pad_id=data.pad_id), ModelCalls("static", pad_id=data.pad_id, compile=True)
    with pytest.raises(ValueError, match="static shapes"):
        ModelCalls("eager", compile=True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    values = {}
    for name, calls in (("eager", eager), ("compiled", compiled)):
        with model.disable_adapter():
            base = calls.losses(model, batch, "candidates")[0]
        adapted = calls.losses(model, batch, "candidates")[0]
        assert not torch.allclose(base, adapted, atol=1e-4)  # the adapter is seen by both
        for p in trainable:
            p.grad = None
        calls.backward(model, batch, "candidates", scale=2.0)
        values[name] = dict(base=base, adapted=adapted, scores=calls.scores(model, batch),
                            grads=[p.grad.clone() for p in trainable])
    blocks = repeated_blocks(model)
    assert [type(b).__name__ for b in blocks] == ["LlamaDecoderLayer"] * 2  # through peft's wrapper
    assert all(b._compiled_call_impl is not None for b in blocks) and not compiled._compiled  # regional, not whole
    for name in ("base", "adapted", "scores"):
        torch.testing.assert_close(values["compiled"][name], values["eager"][name], **TOLERANCE)
    for g_compiled, g_eager in zip(values["compiled"]["grads"], values["eager"]["grads"]):
        torch.testing.assert_close(g_compiled, g_eager, atol=1e-5, rtol=1e-4)


def test_length_groups_cut_where_the_padded_tokens_are_fewest():
    import itertools
    import random

    from zofo.batches import GROUP_SAVING, GroupedBatch, TokenizedExample, grouped_batch, length_groups

    def example(length, options, continuation=2):  # a row per option (not one shared context)
        return TokenizedExample(tuple(((1,) * (length - continuation), (2,) * continuation) for _ in range(options)), 0)

    def tokens(examples, parts, gold_only=False):  # what the model computes: each part at its bucketed shape
        shapes = [option_batch([examples[i] for i in part], 0, gold_only).shape.bucketed() for part in parts]
        return sum(shape.rows * shape.length for shape in shapes)

    rng = random.Random(0)
    for _ in range(20):
        examples = [example(rng.randint(3, 300), rng.randint(1, 3)) for _ in range(7)]
        parts = length_groups(examples, 3)
        assert sorted(i for part in parts for i in part) == list(range(7)) and len(parts) <= 3
        order = sorted(range(7), key=lambda i: examples[i].length)
        cuts = {k: [[order[a:b] for a, b in zip((0, *c), (*c, 7))] for c in itertools.combinations(range(1, 7), k - 1)]
                for k in (1, 2, 3)}
        fewest = {k: min(tokens(examples, cut) for cut in cuts[k]) for k in cuts}
        assert tokens(examples, parts) == fewest[len(parts)]  # the best cut into that many groups
    # a further group is a model call of its own: taken where it saves over GROUP_SAVING of the tokens, not less
    small_saving = [example(64, 1)] * 7 + [example(56, 1)]  # 8 x 64 = 512 against 7 x 64 + 56 = 504
    large_saving = [example(64, 1)] * 4 + [example(40, 1)] * 4  # 512 against 256 + 160 = 416
    assert 1 - tokens(small_saving, [range(7), [7]]) / 512 < GROUP_SAVING < 1 - 416 / 512
    assert len(length_groups(small_saving, 2)) == 1 and len(length_groups(large_saving, 2)) == 2
    same = [example(40, 2)] * 5  # nothing to gain: the plain batch
    assert len(length_groups(same, 4)) == 1 and not isinstance(grouped_batch(same, 0, False, 4), GroupedBatch)
    # a shared context is one row of the context alone; the LM loss batches the gold option alone
    shared = [TokenizedExample((((1,) * 16, (2,)), ((1,) * 16, (3,))), 0)] * 8 + \
             [TokenizedExample((((1,) * 23, (2,)), ((1,) * 23, (3,))), 0)] * 8
    assert tokens(shared, length_groups(shared, 2)) == min(tokens(shared, [range(16)]), tokens(shared, [range(8), range(8, 16)]))
    assert len(length_groups(shared, 2)) == 2  # 16 x 24 = 384 against 8 x 16 + 8 x 24 = 320
    gold = [TokenizedExample((((1,) * 9, (2,)), ((1,) * 199, (2, 2))), 0) for _ in range(4)] + \
           [TokenizedExample((((1,) * 199, (2,)), ((1,) * 9, (2, 2))), 0) for _ in range(4)]
    assert len(length_groups(gold, 2)) == 1 and len(length_groups(gold, 2, gold_only=True)) == 2


@pytest.mark.parametrize("mode", ["eager", "static"])
@pytest.mark.parametrize("task, loss", [("sst2", "candidates"), ("copa", "candidates"), ("copa", "lm")])
def test_a_minibatch_in_length_groups_gives_its_losses_and_gradient(data_dir, mode, task, loss):
    from zofo.adapters import with_adapters
    from zofo.batches import GroupedBatch, grouped_batch
    from zofo.config import AdapterConfig

    model, data = task_batches(task, data_dir, n=8)
    model = with_adapters(model, AdapterConfig(peft="lora"), ["default"], seed=0)
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    examples = data.train[:8]
    plain = option_batch(examples, data.pad_id, gold_only=loss == "lm")
    grouped = grouped_batch(examples, data.pad_id, loss == "lm", 3)
    assert isinstance(grouped, GroupedBatch) and len(grouped.groups) == 3
    assert sum(g.input_ids.numel() for g in grouped.groups) < plain.input_ids.numel()  # fewer padded tokens
    calls = ModelCalls(mode, pad_id=data.pad_id)

    values, weights = calls.losses(model, plain, loss)
    grouped_values, grouped_weights = calls.losses(model, grouped, loss)
    torch.testing.assert_close(grouped_values, values[:8], **TOLERANCE)  # each example in its place
    torch.testing.assert_close(grouped_weights, weights[:8])
    torch.testing.assert_close(calls.loss(model, grouped, loss), calls.loss(model, plain, loss), **TOLERANCE)
    trainable = [p for p in model.parameters() if p.requires_grad]
    results = []
    for batch in (plain, grouped):
        for p in trainable:
            p.grad = None
        mean = calls.backward(model, batch, loss, scale=3.0)
        results.append((mean, [p.grad.clone() for p in trainable]))
    torch.testing.assert_close(results[1][0], results[0][0], **TOLERANCE)
    for g_grouped, g_plain in zip(results[1][1], results[0][1]):
        assert g_plain.abs().sum() > 0
        torch.testing.assert_close(g_grouped, g_plain, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method, peft", [("fo", "lora"), ("mezo", "none"), ("bilevel", "lora"), ("two-stage", "lora")])
def test_every_method_trains_the_same_in_length_groups(data_dir, tmp_path, method, peft):
    from zofo.batches import GroupedBatch

    config = dict(model="tiny-llama", task="copa", data_dir=str(data_dir), n_train=24, n_val=6, n_test=4, batch_size=6,
                  device="cpu", method=method, peft=peft, lr=1e-3, bilevel_k=1, steps=6, zo_eps=1e-2)
    logs = {}
    for groups in (1, 3):
        model, tokenizer = tiny()
        run = make_config({**config, "length_groups": groups})
        tasks = prepare_tasks(run, tokenizer, calls=ModelCalls("static", pad_id=tokenizer.pad_token_id))
        assert isinstance(tasks.single.batch(tasks.single.train[:6]), GroupedBatch) == (groups > 1)
        trained = METHODS[method](model, tasks, run, Trajectory(tmp_path / f"{groups}.jsonl"))
        trained.begin()
        steps = [trained.step(i) for i in range(3)]
        logs[groups] = ([float(v) for log in steps for v in log.values()], tasks.validation_loss(trained.model))
    assert logs[3][0] == pytest.approx(logs[1][0], rel=1e-4, abs=1e-4)
    assert logs[3][1] == pytest.approx(logs[1][1], rel=1e-4, abs=1e-5)


def test_a_backward_scaled_by_a_tensor_gives_the_float_scales_gradient(data_dir):
    """A backward's CUDA graph reads its scale from a tensor (one graph for every scale): the same gradient,
    bit for bit, as the scale given as a number, for 1 and for λ."""
    from zofo.calls import _mean_loss_backward

    model, data = task_batches("copa", data_dir)
    model.requires_grad_(False).lm_head.weight.requires_grad_(True)
    batch = data.batch(data.train[:4])
    for scale in (1.0, 10.0, 1 / 3):
        grads = []
        for given in (scale, torch.tensor(scale)):
            model.lm_head.weight.grad = None
            _mean_loss_backward(model, batch, "candidates", given)
            grads.append(model.lm_head.weight.grad.clone())
        assert torch.equal(grads[0], grads[1])
