"""A run killed with SIGKILL resumes from its last checkpoint and ends as the uninterrupted run ends:
the same selected step, validation loss and test metrics, and bit-identical fp32 weights."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from zofo.cli import main
from zofo.records import read_records

from conftest import REPO

METHODS = {  # (extra flags, train_loss lines logged when the kill comes)
    "fo": (["--method", "fo", "--peft", "lora", "--lr", "1e-2"], 45),
    "fo-before-any-checkpoint": (["--method", "fo", "--peft", "prompt", "--lr", "1e-2"], 5),
    "mezo-full": (["--method", "mezo", "--peft", "none", "--lr", "1e-3", "--zo-optimizer", "zo-sgd",
                   "--zo-momentum", "0.5"], 45),
    "mezo-adapter": (["--method", "mezo", "--peft", "lora", "--lr", "1e-2", "--zo-optimizer", "zo-adam"], 45),
    "bilevel": (["--method", "bilevel", "--peft", "lora", "--lr", "1e-3", "--bilevel-k", "2"], 12),
    "two-stage": (["--method", "two-stage", "--peft", "prefix", "--lr", "1e-3", "--bilevel-k", "2",
                   "--bilevel-lower-lr", "1e-2"], 50),
    "meta-bilevel": (["--method", "meta-bilevel", "--peft", "lora", "--lr", "1e-3", "--bilevel-k", "2",
                      "--meta-train-tasks", "3", "--meta-test-tasks", "1", "--meta-tasks-per-step", "2",
                      "--meta-test-cap", "4", "--meta-tune-steps", "1", "--meta-val-per-task", "4",
                      "--max-length", "96"], 12),
    "meta-mezo": (["--method", "meta-mezo", "--lr", "1e-3", "--meta-train-tasks", "3", "--meta-test-tasks", "1",
                   "--meta-tasks-per-step", "2", "--meta-test-cap", "4", "--meta-tune-steps", "1",
                   "--meta-val-per-task", "4", "--max-length", "96"], 45),
    "meta-icl": (["--method", "meta-icl", "--lr", "1e-3", "--meta-train-tasks", "3", "--meta-test-tasks", "1",
                  "--meta-tasks-per-step", "2", "--meta-test-cap", "4", "--meta-val-per-task", "4",
                  "--meta-demo-max-length", "128"], 45),
}


def args(data_dir, out, extra):
    return ["train", "--model", "tiny-llama", "--task", "sst2", "--data-dir", str(data_dir), "--device", "cpu",
            "--n-train", "32", "--n-val", "8", "--n-test", "8", "--batch-size", "4", "--steps", "60",
            "--eval-every", "10", "--no-zero-shot", "--out-dir", str(out), *extra]


def kill_when(command, log, lines: int, timeout: float = 120, sig=signal.SIGKILL) -> int:
    """Start the command and send it `sig` once `lines` training steps are in its log; its exit code."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    process = subprocess.Popen([sys.executable, "-m", "zofo", *command], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if log.exists() and log.read_text().count("train_loss") >= lines:
            break
        time.sleep(0.01)
    process.send_signal(sig)
    return process.wait()


def saved_weights(folder):
    files = [folder / "adapter" / "adapter_model.safetensors", folder / "model" / "model.safetensors"]
    return {f"{path.parent.name}/{name}": tensor for path in files if path.exists()
            for name, tensor in load_file(path).items()}


@pytest.mark.parametrize("name", METHODS)
def test_a_killed_run_resumes_to_the_metrics_and_weights_of_an_uninterrupted_run(name, tmp_path, data_dir):
    extra, kill_at = METHODS[name]
    assert main(args(data_dir, tmp_path / "whole", extra)) == 0

    killed = tmp_path / "killed"
    kill_when(args(data_dir, killed, extra), killed / "log.jsonl", kill_at)
    assert not (killed / "metrics.json").exists(), "the run should have been killed mid-way"
    assert (killed / "checkpoint.pt").exists() == (kill_at > 10)

    assert main(args(data_dir, killed, extra + ["--resume"])) == 0
    assert_same_run(tmp_path / "whole", killed)


@pytest.mark.parametrize("name", ["fo", "mezo-full", "bilevel"])
def test_a_run_stopped_by_sigterm_checkpoints_its_last_step_and_resumes_to_the_uninterrupted_run(name, tmp_path, data_dir):
    """SIGTERM (a sweep or a GPU lease ending) stops the run after the step under way with a checkpoint
    there, not at the last evaluation: nothing is trained twice, and the resumed run ends as the whole one."""
    extra, _ = METHODS[name]
    assert main(args(data_dir, tmp_path / "whole", extra)) == 0
    stopped = tmp_path / "stopped"
    assert kill_when(args(data_dir, stopped, extra), stopped / "log.jsonl", 15, sig=signal.SIGTERM) == 143
    step = torch.load(stopped / "checkpoint.pt", weights_only=True)["step"]
    logged = [r["step"] for r in read_records(stopped / "log.jsonl") if "train_loss" in r]
    assert step == logged[-1] > 10  # its last logged step, past the last evaluation (step 10)
    assert main(args(data_dir, stopped, extra + ["--resume"])) == 0
    assert_same_run(tmp_path / "whole", stopped)


@pytest.mark.parametrize("name, kill_at", [("mezo-adapter", 13), ("bilevel", 5)])  # bilevel: a line a cycle of 3
def test_checkpoint_every_bounds_what_a_killed_run_loses_and_it_resumes_to_the_uninterrupted_run(name, kill_at,
                                                                                                 tmp_path, data_dir):
    """--checkpoint-every N: checkpoints between evaluations too, so a run killed without warning resumes from
    within N steps of where it was, not from its last evaluation; an execution field, so the run ends as one
    run without it does."""
    extra = METHODS[name][0] + ["--eval-every", "30"]  # killed about step 15: no evaluation yet, whatever the delay
    assert main(args(data_dir, tmp_path / "whole", extra)) == 0
    killed = tmp_path / "killed"
    kill_when(args(data_dir, killed, extra + ["--checkpoint-every", "3"]), killed / "log.jsonl", kill_at)
    assert not (killed / "metrics.json").exists(), "the run should have been killed mid-way"
    step = torch.load(killed / "checkpoint.pt", weights_only=True)["step"]  # with evaluations only: no checkpoint
    assert 0 < step < 30 and step % 3 == 0
    assert main(args(data_dir, killed, extra + ["--resume"])) == 0
    assert_same_run(tmp_path / "whole", killed)


def assert_same_run(whole_folder, resumed_folder):
    """The resumed run's metrics, weights, log and trajectory are the uninterrupted run's."""
    whole, resumed = (json.loads((folder / "metrics.json").read_text()) for folder in (whole_folder, resumed_folder))
    for key in ("best_step", "best_val_loss", "test"):
        assert resumed[key] == whole[key], key
    expected, got = saved_weights(whole_folder), saved_weights(resumed_folder)
    assert expected and expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key].view(torch.uint8), got[key].view(torch.uint8)), key
    # the log holds every step once, as the uninterrupted run's does
    steps = lambda folder, key: [r["step"] for r in read_records(folder / "log.jsonl") if key in r]
    assert steps(resumed_folder, "train_loss") == steps(whole_folder, "train_loss")
    assert steps(resumed_folder, "val_loss") == steps(whole_folder, "val_loss")
    if (resumed_folder / "trajectory.jsonl").exists():
        assert (resumed_folder / "trajectory.jsonl").read_text() == (whole_folder / "trajectory.jsonl").read_text()


def test_a_run_killed_after_its_last_step_resumes_with_the_training_time_it_had(tmp_path, data_dir, monkeypatch):
    """Killed during the test (its checkpoint at the last step): the resumed run trains no step, and reports
    the training seconds of the first attempt, not zero."""
    import zofo.experiment

    def killed(*args, **kwargs):
        raise KeyboardInterrupt
    extra = ["--method", "fo", "--peft", "lora", "--lr", "1e-2"]
    with monkeypatch.context() as patch:
        patch.setattr(zofo.experiment, "save_results", killed)
        assert main(args(data_dir, tmp_path, extra)) != 0  # "interrupted", the checkpoint kept
    trained = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["train_seconds"]
    assert trained > 0
    assert main(args(data_dir, tmp_path, extra + ["--resume"])) == 0
    assert json.loads((tmp_path / "metrics.json").read_text())["train_seconds"] == round(trained, 2)


RETAG = []  # while set, torch.save tags every storage as the GPU's, as a checkpoint written on a GPU is


def gpu_tag(storage):
    return "cuda:0" if RETAG else None


torch.serialization.register_package(0, gpu_tag, lambda storage, location: None)


def test_a_checkpoint_whose_tensors_were_on_a_gpu_resumes_on_this_cpu(tmp_path, data_dir):
    """The checkpoint file ties a run to no device: a run saved on cuda:1 resumes on a machine of one GPU, a
    first-order run saved on a GPU resumes on a CPU. (θ's ZO directions are still drawn by the device type that
    trained it: a GPU's ZO run resumes on a GPU; elsewhere the trajectory's replay refuses, saying so.)"""
    extra, _ = METHODS["bilevel"]
    assert main(args(data_dir, tmp_path / "whole", extra)) == 0
    moved = tmp_path / "moved"
    assert kill_when(args(data_dir, moved, extra), moved / "log.jsonl", 15, sig=signal.SIGTERM) == 143
    state = torch.load(moved / "checkpoint.pt", weights_only=True)
    RETAG.append(True)
    try:
        torch.save(state, moved / "checkpoint.pt")
    finally:
        RETAG.clear()
    if not torch.cuda.is_available():  # the file now asks for a GPU this machine lacks
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(moved / "checkpoint.pt", weights_only=True)
    assert main(args(data_dir, moved, extra + ["--resume"])) == 0
    assert_same_run(tmp_path / "whole", moved)
