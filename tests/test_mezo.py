import gzip
import json

import pytest
import torch
from safetensors.torch import load_file

from zofo.cli import main
from zofo.config import make_config
from zofo.errors import RecordError
from zofo.records import read_records

from conftest import tiny


def mezo_args(data_dir, out, *extra):
    return ["train", "--method", "mezo", "--model", "tiny-llama", "--task", "sst2", "--data-dir", str(data_dir),
            "--device", "cpu", "--n-train", "32", "--n-val", "8", "--n-test", "8", "--batch-size", "4",
            "--lr", "1e-3", "--no-zero-shot", "--out-dir", str(out), *extra]


def weights(folder):
    return load_file(folder / "model.safetensors")


def assert_bit_identical(a: dict, b: dict):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name].view(torch.uint8), b[name].view(torch.uint8)), name


def test_full_model_mezo_writes_a_trajectory_that_rebuilds_the_selected_weights(tmp_path, data_dir):
    out = tmp_path / "run"
    assert main(mezo_args(data_dir, out, "--peft", "none", "--steps", "20", "--eval-every", "5")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    header, *trajectory = [json.loads(line) for line in (out / "trajectory.jsonl").read_text().splitlines()]
    assert "torch cpu generator" in header["directions"]
    assert [r["step"] for r in trajectory] == list(range(1, 21))
    assert all(set(r) == {"step", "seed", "scalars", "lr"} for r in trajectory)
    assert metrics["trajectory_bytes"] < metrics["model_bytes"] / 50
    assert metrics["zo_optimizer_state_bytes"] == 0

    # `zofo replay` rebuilds the saved (validation-selected) model bit for bit, from the base and the log.
    assert main(["replay", str(out), "--output", str(tmp_path / "replayed")]) == 0
    assert_bit_identical(weights(out / "model"), weights(tmp_path / "replayed"))
    # And any other step: the last one differs from the selected one unless the last was best.
    assert main(["replay", str(out), "--step", "20", "--output", str(tmp_path / "last")]) == 0
    changed = any(not torch.equal(a, b) for a, b in zip(weights(out / "model").values(),
                                                        weights(tmp_path / "last").values()))
    assert changed == (metrics["best_step"] != 20)

    # Kept the way results/ keeps finished runs (scripts/collect_runs.sh gzips their JSON lines): the same.
    logged = read_records(out / "log.jsonl")
    for name in ("trajectory.jsonl", "log.jsonl"):
        (out / f"{name}.gz").write_bytes(gzip.compress((out / name).read_bytes()))
        (out / name).unlink()
    assert read_records(out / "log.jsonl") == logged
    assert main(["replay", str(out), "--output", str(tmp_path / "from_gzip")]) == 0
    assert_bit_identical(weights(out / "model"), weights(tmp_path / "from_gzip"))
    (out / "log.jsonl.gz").write_bytes((out / "log.jsonl.gz").read_bytes()[:-20])  # cut short
    with pytest.raises(RecordError, match=r"log.jsonl.gz: not a whole gzip file"):
        read_records(out / "log.jsonl")


@pytest.mark.parametrize("peft", ["lora", "prefix", "prompt"])
def test_mezo_on_adapter_parameters_moves_only_the_adapter(tmp_path, data_dir, peft):
    out = tmp_path / peft
    assert main(mezo_args(data_dir, out, "--peft", peft, "--steps", "6", "--eval-every", "3", "--lr", "1e-2")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    saved = load_file(out / "adapter" / "adapter_model.safetensors")
    assert not (out / "model").exists()
    assert metrics["zo_parameters"] == sum(t.numel() for t in saved.values()) < 10_000
    assert main(["replay", str(out), "--output", str(tmp_path / "replayed")]) == 0
    assert_bit_identical(saved, load_file(tmp_path / "replayed" / "adapter_model.safetensors"))


def test_replay_refuses_a_log_from_another_direction_generator_or_an_older_zofo(tmp_path):
    from zofo.errors import RecordError
    from zofo.zo import SPSA, ZOSGD, ParameterSpace, Trajectory, replay

    lin = torch.nn.Linear(4, 3)
    space = ParameterSpace(lin.named_parameters())
    spsa, sgd = SPSA(space, 1e-3), ZOSGD(space, 1e-2)
    trajectory = Trajectory(tmp_path / "trajectory.jsonl")
    trajectory.start(space.directions)
    estimate = spsa.estimate(lambda: lin.weight.sum(), 3)
    sgd.step(estimate)
    trajectory.append(1, 3, estimate.scalars, sgd.lr)
    assert len(trajectory.read()) == 1 and space.directions in trajectory.path.read_text()
    assert replay(trajectory, spsa, sgd) == 1

    other = ParameterSpace(torch.nn.Linear(4, 5).named_parameters())  # another parameter count
    with pytest.raises(RecordError, match="directions"):
        replay(trajectory, SPSA(other, 1e-3), ZOSGD(other, 1e-2))
    old = tmp_path / "old.jsonl"  # zofo 0.1's header named chunks and buckets, and no format
    old.write_text(json.dumps({"directions": "torch (torch cpu generator), chunks of 16777216, 15 parameters in 2 buckets"})
                   + "\n" + json.dumps({"step": 1, "seed": 3, "scalars": [0.1], "lr": 0.01}) + "\n")
    with pytest.raises(RecordError, match="zofo 0.1"):
        replay(Trajectory(old), spsa, sgd)


def test_an_update_below_the_dtype_resolution_is_measured_and_warned_about(data_dir, tmp_path):
    """bf16 keeps 8 bits of mantissa: at lr 1e-9 no weight moves, and the run says so at its first step; fp32
    loses such an update only at a far lower rate, and then the advice is a higher rate, not fp32 again."""
    import warnings

    from zofo.data import prepare_tasks
    from zofo.methods.mezo import MeZO
    from zofo.zo import Trajectory

    fractions = {}
    for run, dtype, lr in (("bf16", "bf16", 1e-9), ("fp32", "fp32", 1e-3), ("fp32-tiny-lr", "fp32", 1e-14)):
        config = make_config(dict(model="tiny-llama", task="sst2", data_dir=str(data_dir), n_train=8, n_val=4,
                                  n_test=4, batch_size=4, method="mezo", peft="none", dtype=dtype, lr=lr,
                                  device="cpu", zo_eps=1e-2))
        model, tokenizer = tiny(dtype=dtype)
        method = MeZO(model, prepare_tasks(config, tokenizer), config, Trajectory(tmp_path / f"{run}.jsonl"))
        method.begin()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            method.step(0)
            method.step(1)  # measured once, at the first step
        fractions[run] = method.summary()["first_update_changed_fraction"]
        messages = [str(w.message) for w in caught if "resolution" in str(w.message)]
        assert len(messages) == (0 if run == "fp32" else 1), messages
        if messages:
            assert messages[0].endswith("raise --lr or train in fp32" if dtype == "bf16" else "raise --lr"), messages
    assert fractions["bf16"] < 0.01 and fractions["fp32"] > 0.9 and fractions["fp32-tiny-lr"] < 0.5
