"""Data parallelism on the CPU: two processes (gloo), launched by the tests themselves with torchrun or with
torchrun's environment variables, against one process with the same global batch.

Tolerance (fp32): the two ranks' losses are means over half a minibatch each, averaged; one process sums the
whole minibatch in another order, so losses differ by float32 round-off, which the ZO estimate divides by
2ε = 2e-3 and the updates carry into the weights and so into later losses. Measured: losses up to 1.0e-5,
projected gradients up to 4.2e-4, weights up to 1.2e-5 (MeZO 100 steps, FO-LoRA 10 with the LM loss,
Bilevel-LoRA 12). The tests
allow 1e-4 on losses and weights and 5e-3 on projected gradients (ZO scalars). Not bit-identical: the
reduction order differs (the first MeZO steps happen to agree bit for bit).
"""

import gc
import json
import os
import signal
import socket
import subprocess
import sys
import time
import weakref

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from zofo import distributed
from zofo.cli import main
from zofo.errors import RanksDiverged
from zofo.records import read_records

from conftest import REPO, tiny

LOSS_TOLERANCE = WEIGHT_TOLERANCE = 1e-4
GRADIENT_TOLERANCE = 5e-3  # a projected gradient is a loss difference divided by 2ε
METHODS = {  # method flags, steps, eval_every
    "mezo": (["--method", "mezo", "--peft", "none", "--lr", "1e-3"], 100, 10),
    # the LM loss on COPA's answers of different lengths: ranks are weighted by their answer tokens
    "fo": (["--method", "fo", "--peft", "lora", "--lr", "1e-2", "--task", "copa", "--loss", "lm"], 10, 5),
    "bilevel": (["--method", "bilevel", "--peft", "lora", "--lr", "1e-3", "--bilevel-k", "2"], 12, 6),
}


def train_args(data_dir, out, name, *extra):
    flags, steps, eval_every = METHODS[name]
    return ["train", "--model", "tiny-llama", "--task", "sst2", "--data-dir", str(data_dir), "--device", "cpu",
            "--n-train", "32", "--n-val", "8", "--n-test", "8", "--batch-size", "4", "--steps", str(steps),
            "--eval-every", str(eval_every), "--weight-check-every", "5", "--no-zero-shot", "--out-dir", str(out),
            *flags, *extra]


def environment(**extra):
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", **extra}


def torchrun(args, timeout=120):
    """`torchrun --nproc-per-node 2 -m zofo ...`, as a user launches it."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "zofo", *args]
    result = subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def saved_weights(folder):
    files = [folder / "adapter" / "adapter_model.safetensors", folder / "model" / "model.safetensors"]
    return {f"{path.parent.name}/{name}": tensor for path in files if path.exists()
            for name, tensor in load_file(path).items()}


@pytest.fixture(scope="module")
def data_parallel_runs(tmp_path_factory, data_dir):
    """Each method trained once by two processes (torchrun), on demand."""
    folders = {}

    def run(name):
        if name not in folders:
            folders[name] = tmp_path_factory.mktemp(f"{name}-2-processes")
            torchrun(train_args(data_dir, folders[name], name, "--overwrite"))
        return folders[name]

    return run


@pytest.mark.parametrize("name", METHODS)
def test_two_processes_train_as_one_process_with_the_same_global_batch(name, data_parallel_runs, tmp_path, data_dir):
    one = tmp_path / "one-process"
    assert main(train_args(data_dir, one, name)) == 0
    two = data_parallel_runs(name)

    assert_same_logs(one, two)  # rank 0 alone wrote the folder: the same records, values within the tolerance
    metrics = [json.loads((folder / "metrics.json").read_text()) for folder in (one, two)]
    assert metrics[1]["processes"] == 2
    assert metrics[0]["best_step"] == metrics[1]["best_step"] and metrics[0]["test"] == metrics[1]["test"]
    assert abs(metrics[0]["best_val_loss"] - metrics[1]["best_val_loss"]) <= LOSS_TOLERANCE

    expected, got = saved_weights(one), saved_weights(two)
    assert expected and expected.keys() == got.keys()
    for key in expected:
        assert torch.allclose(expected[key], got[key], rtol=0, atol=WEIGHT_TOLERANCE), (key, (expected[key] - got[key]).abs().max())
    if (one / "trajectory.jsonl").exists():  # the same directions, scalars within the tolerance
        steps = [trajectory_records(folder) for folder in (one, two)]
        assert [(r["step"], r["seed"]) for r in steps[0]] == [(r["step"], r["seed"]) for r in steps[1]]
        assert all(abs(a - b) <= GRADIENT_TOLERANCE for r, s in zip(*steps) for a, b in zip(r["scalars"], s["scalars"]))


def assert_same_logs(expected, got):
    """The same records with the same keys, at the same steps, values within the tolerance, relative above 1 (as
    the trajectory's scalars): the batch summed in other splits differs in fp32 by an amount that grows with the
    value, and meta-bilevel's upper objective (about 11 on a tiny model) differed by 1.3e-4 at step 9 on one CPU."""
    logged = [read_records(folder / "log.jsonl") for folder in (expected, got)]
    assert [sorted(r) for r in logged[0]] == [sorted(r) for r in logged[1]]
    assert [r["step"] for r in logged[0]] == [r["step"] for r in logged[1]]
    for a, b in zip(*logged):
        for key in a:
            tolerance = GRADIENT_TOLERANCE if key == "projected_grad" else LOSS_TOLERANCE
            assert abs(a[key] - b[key]) <= tolerance * max(1.0, abs(a[key])), (a["step"], key, a[key], b[key])


META = ["--meta-train-tasks", "3", "--meta-tasks-per-step", "2", "--meta-val-per-task", "4", "--max-length", "96",
        "--no-test", "--lr", "1e-3"]
META_METHODS = {  # method flags, steps, eval_every; trained only (--no-test): the meta-test is the evaluation's
    "meta-mezo": (["--method", "meta-mezo", *META], 12, 6),
    "meta-bilevel": (["--method", "meta-bilevel", "--peft", "lora", "--bilevel-k", "2", *META], 12, 6),
    "meta-icl": (["--method", "meta-icl", "--meta-demo-max-length", "128", *META], 6, 3),
}


@pytest.mark.parametrize("name", META_METHODS)
def test_meta_training_on_two_processes_trains_as_on_one(name, monkeypatch, tmp_path, data_dir):
    """Every sampled task's loss (and gradient) averaged over the ranks with that task's own weights."""
    monkeypatch.setitem(METHODS, name, META_METHODS[name])
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(train_args(data_dir, one, name)) == 0
    torchrun(train_args(data_dir, two, name))
    assert_same_logs(one, two)
    metrics = [json.loads((folder / "metrics.json").read_text()) for folder in (one, two)]
    assert metrics[1]["processes"] == 2 and metrics[0]["best_step"] == metrics[1]["best_step"]
    assert abs(metrics[0]["best_val_loss"] - metrics[1]["best_val_loss"]) <= LOSS_TOLERANCE
    if (one / "trajectory.jsonl").exists():  # F sums tasks' losses of ~5.5 (and λ·penalties): relative round-off
        steps = [trajectory_records(folder) for folder in (one, two)]
        assert [(r["step"], r["seed"]) for r in steps[0]] == [(r["step"], r["seed"]) for r in steps[1]]
        assert all(abs(a - b) <= GRADIENT_TOLERANCE * max(1.0, abs(a))
                   for r, s in zip(*steps) for a, b in zip(r["scalars"], s["scalars"]))


def trajectory_records(folder):
    return read_records(folder / "trajectory.jsonl")[1:]


def test_a_killed_rank_stops_the_other_with_a_clear_error_and_the_run_resumes(data_parallel_runs, tmp_path, data_dir):
    args = train_args(data_dir, tmp_path / "killed", "mezo")
    port = free_port()
    ranks = [subprocess.Popen([sys.executable, "-m", "zofo", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, env=environment(WORLD_SIZE="2", RANK=str(r), LOCAL_RANK=str(r),
                                                         MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)))
             for r in range(2)]
    log, deadline = tmp_path / "killed" / "log.jsonl", time.time() + 120
    while time.time() < deadline and ranks[0].poll() is None:  # after the checkpoint of step 30
        if log.exists() and log.read_text().count("train_loss") >= 30:
            break
        time.sleep(0.01)
    ranks[1].send_signal(signal.SIGKILL)
    killed_at = time.time()
    try:
        _, error = ranks[0].communicate(timeout=60)
    finally:
        for rank in ranks:
            rank.kill()
            rank.wait()
    assert time.time() - killed_at < 60
    assert ranks[0].returncode == 2, error[-2000:]
    assert "rank 0 of 2 lost the other ranks" in error and "--resume" in error, error[-2000:]
    assert not (tmp_path / "killed" / "metrics.json").exists(), "rank 1 should have been killed mid-run"

    torchrun(train_args(data_dir, tmp_path / "killed", "mezo", "--resume"))
    whole, resumed = data_parallel_runs("mezo"), tmp_path / "killed"
    metrics = [json.loads((folder / "metrics.json").read_text()) for folder in (whole, resumed)]
    for key in ("best_step", "best_val_loss", "test"):
        assert metrics[0][key] == metrics[1][key], key
    assert (whole / "trajectory.jsonl").read_text() == (resumed / "trajectory.jsonl").read_text()
    expected, got = saved_weights(whole), saved_weights(resumed)
    assert expected and all(torch.equal(expected[k], got[k]) for k in expected)


def test_accelerate_launch_runs_the_same_training_as_torchrun(data_parallel_runs, tmp_path, data_dir):
    """`accelerate launch --multi_gpu` starts torchrun itself: the same two processes, unchanged (here on gloo)."""
    folder = tmp_path / "accelerate"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "-m", "zofo", *train_args(data_dir, folder, "mezo")]
    result = subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((folder / "metrics.json").read_text())["processes"] == 2
    assert (folder / "trajectory.jsonl").read_text() == (data_parallel_runs("mezo") / "trajectory.jsonl").read_text()


def test_a_batch_that_does_not_split_over_the_processes_fails_before_anything_loads(monkeypatch, capsys, tmp_path, data_dir):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr("zofo.experiment.load_model", lambda *a, **k: pytest.fail("the model should not load"))
    assert main(train_args(data_dir, tmp_path / "run", "fo", "--batch-size", "3")) == 2
    assert "--batch-size 3 does not split over 2 processes" in capsys.readouterr().err


def test_shards_are_contiguous_cover_the_list_and_differ_by_at_most_one(monkeypatch):
    items = list(range(7))
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    shards = []
    for r in range(3):
        monkeypatch.setattr(distributed, "rank", lambda: r)
        shards.append(distributed.shard(items))
    assert sum(shards, []) == items and {len(s) for s in shards} == {2, 3}


def test_a_checksum_sees_one_changed_element_and_two_swapped_ones():
    for dtype in (torch.float32, torch.bfloat16):
        weights = torch.randn(1000, dtype=dtype)
        changed, swapped = weights.clone(), weights.clone()
        changed.view({2: torch.int16, 4: torch.int32}[changed.element_size()])[500] += 1  # the next value up
        swapped[[3, 4]] = swapped[[4, 3]]
        assert torch.equal(distributed.checksum(weights), distributed.checksum(weights.clone()))
        assert not torch.equal(distributed.checksum(weights), distributed.checksum(changed))
        assert not torch.equal(distributed.checksum(weights), distributed.checksum(swapped))


def test_teardown_frees_cyclic_garbage_before_it_destroys_the_process_group(tmp_path):
    """A model sharded by FSDP2 sits in reference cycles; freed only at the interpreter's exit, after the group
    was destroyed, it aborted the process now and then. Teardown collects such garbage while the group lives."""
    class Node:
        pass

    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    cycle = Node()
    cycle.itself = cycle
    alive = weakref.ref(cycle)
    del cycle
    gc.disable()  # so that only teardown's own collection can free it
    try:
        distributed.teardown()
    finally:
        gc.enable()
    assert alive() is None
    assert not torch.distributed.is_initialized()


def compare_weights_worker(rank: int, port: int, results) -> None:
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    distributed.setup(torch.device("cpu"), timeout_seconds=60)
    model, _ = tiny()
    distributed.check_same_weights(model, step=1)  # the same seeded model on both ranks
    if rank == 1:
        with torch.no_grad():
            model.model.layers[1].mlp.up_proj.weight[2, 3] += 1e-3
    try:
        distributed.check_same_weights(model, step=2)
        results[rank] = "no error"
    except RanksDiverged as error:
        results[rank] = str(error)
    distributed.teardown()


def test_ranks_whose_weights_differ_stop_naming_the_first_tensor():
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(compare_weights_worker, args=(free_port(), results), nprocs=2)
        results = dict(results)
    for rank in (0, 1):  # every rank stops, with the same message
        assert "after step 2 the ranks hold different weights: first 'model.layers.1.mlp.up_proj.weight'" in results[rank]
        assert "rank(s) 1 differ from rank 0" in results[rank]


def sharded_against_unsharded(name, data_parallel_runs, tmp_path, data_dir):
    """The method trained with --shard-weights on two processes, against its data-parallel run with whole
    weights: the same logs, best step, test metrics and saved weights; each rank moved a slice of θ only."""
    sharded = tmp_path / "sharded"
    torchrun(train_args(data_dir, sharded, name, "--shard-weights"))
    unsharded = data_parallel_runs(name)
    assert_same_logs(unsharded, sharded)
    metrics = [json.loads((folder / "metrics.json").read_text()) for folder in (unsharded, sharded)]
    assert metrics[0]["best_step"] == metrics[1]["best_step"] and metrics[0]["test"] == metrics[1]["test"]
    assert metrics[1]["zo_parameters"] < metrics[0]["zo_parameters"]
    expected, got = saved_weights(unsharded), saved_weights(sharded)
    assert expected and expected.keys() == got.keys()
    for key in expected:
        assert torch.allclose(expected[key], got[key], rtol=0, atol=WEIGHT_TOLERANCE), key
    return unsharded, sharded, metrics


def test_sharded_mezo_on_two_processes_trains_as_unsharded_mezo_on_one_and_replays_onto_the_whole_model(
        data_parallel_runs, tmp_path, data_dir):
    """θ split over two ranks by FSDP2: each rank perturbs and updates its slice with the directions of the
    whole θ (keyed by global index). Against the data-parallel run (the same shards of every minibatch,
    unsharded weights): the same losses and weights to float round-off; the trajectory replays on one process
    into the weights the sharded run saved, bit for bit."""
    unsharded, sharded, _ = sharded_against_unsharded("mezo", data_parallel_runs, tmp_path, data_dir)
    header = read_records(sharded / "trajectory.jsonl")[0]
    assert header == read_records(unsharded / "trajectory.jsonl")[0]  # the whole θ's directions
    assert main(["replay", str(sharded), "--output", str(tmp_path / "replayed")]) == 0
    replayed = load_file(tmp_path / "replayed" / "model.safetensors")
    for name, tensor in load_file(sharded / "model" / "model.safetensors").items():
        assert torch.equal(replayed[name], tensor), name


def test_sharded_bilevel_on_two_processes_trains_as_unsharded_bilevel(data_parallel_runs, tmp_path, data_dir):
    """θ split over the ranks, φ and z whole on each: the same losses, θ and adapters as with unsharded weights."""
    unsharded, sharded, metrics = sharded_against_unsharded("bilevel", data_parallel_runs, tmp_path, data_dir)
    assert metrics[1]["test_theta_alone"] == metrics[0]["test_theta_alone"]  # the other adapters' tests, as unsharded
    assert any(name.startswith("adapter/") for name in saved_weights(sharded))


def test_sharded_weights_need_a_torchrun_launch_and_mezo_or_bilevel(capsys, tmp_path, data_dir):
    assert main(train_args(data_dir, tmp_path / "run", "mezo", "--shard-weights")) == 2
    assert "--shard-weights splits the weights over the processes of a torchrun launch" in capsys.readouterr().err
    assert main(train_args(data_dir, tmp_path / "run", "fo", "--shard-weights")) == 2
    assert "built for MeZO on the full model (--method mezo --peft none) and Bilevel ZOFO" in capsys.readouterr().err
    assert main(train_args(data_dir, tmp_path / "run", "mezo", "--shard-weights", "--zo-optimizer", "zo-adam")) == 2
    assert "stateless ZO optimizer" in capsys.readouterr().err
