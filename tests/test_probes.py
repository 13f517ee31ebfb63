"""Bad inputs and faults, tried as a new user would: each ends in one message that names the file, field
or value and what to do, with exit code 2 and no traceback, before any slow work where it can be known
before; nothing already written is lost."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

import zofo.experiment
from zofo.cli import main

from conftest import REPO


def tiny_args(data_dir, out, *extra):
    return ["train", "--model", "tiny-llama", "--task", "sst2", "--data-dir", str(data_dir), "--device", "cpu",
            "--n-train", "16", "--n-val", "4", "--n-test", "4", "--batch-size", "4", "--steps", "6",
            "--eval-every", "3", "--no-zero-shot", "--method", "fo", "--lr", "1e-2", "--out-dir", str(out), *extra]


def error_of(capsys, argv) -> str:
    """Run the command line; it must fail with exit code 2 and one message, no traceback."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"\nzofo {argv[0]}: error: " in "\n" + err
    return err[err.index(f"zofo {argv[0]}: error: "):]


@pytest.fixture
def nothing_loads(monkeypatch):
    """Fail the test if the model, the tokenizer or the data would load: the check must come first."""
    def too_late(*args, **kwargs):
        raise AssertionError("this mistake should have been reported before anything loaded")
    for name in ("load_tokenizer", "load_model", "prepare_tasks"):
        monkeypatch.setattr(zofo.experiment, name, too_late)


@pytest.mark.parametrize("extra, message", [
    (["--steps", "0"], "'steps' (--steps) = '0'"),
    (["--steps", "-5"], "greater than or equal to 1"),
    (["--method", "bilevel", "--steps", "6"], "needs steps >= bilevel.k + 1 = 11"),
    (["--method", "bilevel", "--steps", "-1"], "'steps' (--steps) = '-1'"),
    (["--lr", "-1"], "'lr' (--lr) = '-1'"),
    (["--lr", "inf"], "'lr' (--lr) = 'inf': Input should be a finite number"),
    (["--batch-size", "0"], "--batch-size"),
    (["--eval-every", "0"], "--eval-every"),
    (["--method", "mezo", "--zo-eps", "0"], "--zo-eps"),
    (["--device", "cuda"], "this machine has no CUDA device"),
    (["--model", "/nowhere/model"], "--model /nowhere/model: no such folder"),
    (["--model", "no-such-org/no-such-model"], "the Hub cannot be reached"),
])
def test_bad_values_fail_at_once(extra, message, capsys, tmp_path, data_dir, nothing_loads):
    if "cuda" in extra and __import__("torch").cuda.is_available():
        pytest.skip("this machine has CUDA")
    start = time.perf_counter()
    assert message in error_of(capsys, tiny_args(data_dir, tmp_path / "run", *extra))
    assert time.perf_counter() - start < 10


def test_a_model_folder_without_a_model_and_an_out_dir_that_is_a_file(capsys, tmp_path, data_dir, nothing_loads):
    (tmp_path / "empty").mkdir()
    assert "no config.json in this folder" in error_of(capsys, tiny_args(data_dir, tmp_path / "r", "--model", str(tmp_path / "empty")))
    (tmp_path / "file").write_text("x")
    assert "is a file: choose another --out-dir" in error_of(capsys, tiny_args(data_dir, tmp_path / "file"))


def test_yaml_values_are_converted_or_named(capsys, tmp_path, data_dir, nothing_loads):
    (tmp_path / "c.yaml").write_text("steps: six\n")
    assert "c.yaml: config field 'steps' (--steps) = 'six'" in error_of(capsys, ["train", "--config", str(tmp_path / "c.yaml")])


@pytest.mark.parametrize("content, message", [(b"", "no examples in this file"),
                                               (b"sentence\tlabel\nfine\t1\nbad \xff byte\t0\n", ":3: not UTF-8 text (byte 0xff)")])
def test_bad_task_files_are_named(content, message, capsys, tmp_path, data_dir):
    data = tmp_path / "data"
    (data / "glue" / "sst2").mkdir(parents=True)
    (data / "glue" / "sst2" / "train.tsv").write_bytes(content)
    shutil.copy(data_dir / "glue" / "sst2" / "dev.tsv", data / "glue" / "sst2" / "dev.tsv")
    err = error_of(capsys, tiny_args(data, tmp_path / "run"))
    assert str(data / "glue" / "sst2" / "train.tsv") in err and message in err


@pytest.mark.parametrize("method, lr", [("fo", "1e-2"), ("mezo", "1e30"), ("bilevel", "1e-3")])
def test_a_diverging_run_stops_with_the_step_and_keeps_its_log(method, lr, capsys, tmp_path, data_dir, monkeypatch):
    if method != "mezo":  # Adam's steps are bounded by its learning rate: make the loss itself NaN
        import zofo.calls

        calls, losses = [], zofo.calls.example_losses
        bad_call = 5 if method == "fo" else 9  # bilevel: 8 calls in the first cycle, then the second's lower level

        def nan_at_bad_call(*args):
            calls.append(1)
            values, weights = losses(*args)
            return values * (float("nan") if len(calls) == bad_call else 1), weights
        monkeypatch.setattr(zofo.calls, "example_losses", nan_at_bad_call)
    out = tmp_path / "run"
    extra = ["--method", method, "--lr", lr, "--steps", "33", "--eval-every", "11", "--bilevel-k", "2",
             "--bilevel-lower-lr", "1e-2", "--bilevel-upper-lr", "1e-2"]
    err = error_of(capsys, tiny_args(data_dir, out, *extra))
    assert "became" in err and " at step " in err and "lower the learning rate" in err
    assert "fp32" not in err  # the run is fp32 already: no advice to use it
    step = int(err.split(" at step ")[1].split()[0].rstrip(":"))
    logged = [r["step"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines())]
    assert logged == sorted(set(logged)) and step - 3 <= logged[-1] <= step  # every step up to the bad one


def test_a_nan_validation_loss_stops_the_run(capsys, tmp_path, data_dir, monkeypatch):
    monkeypatch.setattr("zofo.data.TaskSet.validation_loss", lambda self, model: float("nan"))
    assert "the validation loss became nan at step 3" in error_of(capsys, tiny_args(data_dir, tmp_path / "run"))


def test_ctrl_c_says_how_to_continue(capsys, tmp_path, data_dir, monkeypatch):
    def interrupt(self, iteration):
        raise KeyboardInterrupt
    monkeypatch.setattr("zofo.methods.first_order.FirstOrder.step", interrupt)
    assert main(tiny_args(data_dir, tmp_path / "run")) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err


def test_torn_last_lines_are_dropped_and_bad_records_named(capsys, tmp_path, data_dir):
    out = tmp_path / "run"
    assert main(tiny_args(data_dir, out, "--method", "mezo", "--peft", "none")) == 0
    trajectory = out / "trajectory.jsonl"
    intact = trajectory.read_text()
    trajectory.write_text(intact + '{"step": 7, "seed": 12')  # a writer killed mid-line
    with pytest.warns(UserWarning, match="torn last line"):
        assert main(["replay", str(out), "--output", str(tmp_path / "replayed")]) == 0
    lines = intact.splitlines()
    record = json.loads(lines[2])
    del record["scalars"]
    trajectory.write_text("\n".join(lines[:2] + [json.dumps(record)] + lines[3:]) + "\n")
    assert f"{trajectory}:3: trajectory record lacks scalars" in error_of(capsys, ["replay", str(out), "--output", str(tmp_path / "r2")])
    (out / "metrics.json").write_text('{"test": {"accu')
    err = error_of(capsys, ["report", str(tmp_path)])
    assert str(out / "metrics.json") in err and "not valid JSON" in err


def killed_mid_run(data_dir, out, *extra):
    """A run folder as a SIGKILL leaves it, with a checkpoint (at step 40 or 50 of 60)."""
    from test_resume import kill_when

    kill_when(tiny_args(data_dir, out, "--steps", "60", "--eval-every", "10", *extra), out / "log.jsonl", 45)
    assert (out / "checkpoint.pt").exists() and not (out / "metrics.json").exists()


def test_a_torn_log_line_does_not_stop_a_resume(tmp_path, data_dir):
    out = tmp_path / "run"
    killed_mid_run(data_dir, out)
    log = out / "log.jsonl"
    log.write_text(log.read_text() + '{"step": 58, "train_lo')
    with pytest.warns(UserWarning, match="torn last line"):
        assert main(tiny_args(data_dir, out, "--steps", "60", "--eval-every", "10", "--resume")) == 0
    assert not (out / "checkpoint.pt").exists()  # finished: nothing left to resume


def test_a_folder_holding_a_run_is_reused_only_when_asked(capsys, tmp_path, data_dir, nothing_loads):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    (out / "log.jsonl").write_text('{"step": 1, "train_loss": 0.5}\n')
    assert "already holds a finished run" in error_of(capsys, tiny_args(data_dir, out))
    assert "nothing to resume" in error_of(capsys, tiny_args(data_dir, out, "--resume"))
    (out / "metrics.json").unlink()
    assert "already holds an unfinished run: --resume continues" in error_of(capsys, tiny_args(data_dir, out))


def test_overwrite_replaces_the_run_whole(tmp_path, data_dir):
    out = tmp_path / "run"
    assert main(tiny_args(data_dir, out, "--method", "mezo", "--peft", "none")) == 0
    assert (out / "trajectory.jsonl").exists() and (out / "model").is_dir()
    assert main(tiny_args(data_dir, out, "--overwrite")) == 0  # now fo: nothing of the mezo run may remain
    assert not (out / "trajectory.jsonl").exists() and not (out / "model").exists()
    assert yaml.safe_load((out / "config.yaml").read_text())["method"] == "fo"


def test_resume_refuses_another_configuration(capsys, tmp_path, data_dir):
    out = tmp_path / "run"
    killed_mid_run(data_dir, out)
    err = error_of(capsys, tiny_args(data_dir, out, "--steps", "60", "--eval-every", "10", "--seed", "1",
                                     "--batch-size", "2", "--resume"))
    assert "seed: 0 -> 1" in err and "batch_size: 4 -> 2" in err and "another configuration" in err
    err = error_of(capsys, tiny_args(data_dir, out, "--steps", "10", "--eval-every", "10", "--resume"))
    assert "steps: 60 -> 10" in err  # a checkpoint at step 40 or 50 cannot finish a 10-step run


def test_resume_ignores_fields_the_method_does_not_read(tmp_path, data_dir):
    import torch

    out = tmp_path / "run"
    killed_mid_run(data_dir, out)  # first-order LoRA
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    del checkpoint["config"]["adapter"]["prefix_init"]  # as a zofo from before that field wrote it
    torch.save(checkpoint, out / "checkpoint.pt")
    assert main(tiny_args(data_dir, out, "--steps", "60", "--eval-every", "10", "--prefix-tokens", "7",
                          "--resume")) == 0
    assert (out / "metrics.json").exists()


def start(command):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen([sys.executable, "-m", "zofo", *command], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def wait_for(condition, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_two_runs_cannot_write_one_folder(capsys, tmp_path, data_dir):
    out = tmp_path / "run"
    first = start(tiny_args(data_dir, out, "--steps", "100000"))
    try:
        assert wait_for(lambda: (out / "log.jsonl").exists() and (out / "log.jsonl").stat().st_size > 0)
        err = error_of(capsys, tiny_args(data_dir, out, "--resume"))
        assert f"being written by another zofo run (pid {first.pid})" in err
    finally:
        first.kill()
        first.wait()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has ended
        return f.read().split(") ")[1][0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="children follow their parent through prctl, Linux only")
def test_a_killed_sweep_takes_its_runs_with_it(tmp_path, data_dir):
    sweep = {"out_dir": str(tmp_path / "runs"), "parallel": 1,
             "base": {"model": "tiny-llama", "task": "sst2", "method": "fo", "data_dir": str(data_dir), "device": "cpu",
                      "n_train": 16, "n_val": 4, "n_test": 4, "steps": 100000, "eval_every": 1000, "zero_shot": False},
             "grid": {"seed": [0, 1]}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep))
    parent = start(["sweep", str(tmp_path / "s.yaml")])
    lock = tmp_path / "runs" / "seed=0" / ".lock"
    assert wait_for(lambda: lock.exists() and lock.read_text().startswith("pid"))
    child = int(lock.read_text().split()[1])
    assert alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    assert wait_for(lambda: not alive(child), timeout=20), "the run outlived its sweep"


def test_a_run_prints_no_library_notices_a_user_cannot_act_on(tmp_path, data_dir):
    # GPT-2's fused attention makes peft warn about fan_in_fan_out; prefix tuning makes transformers
    # and peft warn about past_key_values and position ids.
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "TQDM_DISABLE": "1"}
    for peft in ("lora", "prefix"):
        command = [sys.executable, "-m", "zofo", *tiny_args(data_dir, tmp_path / peft, "--model", "tiny-gpt2", "--peft", peft)]
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        assert "Warning" not in result.stderr and "warn" not in result.stderr.lower(), result.stderr


def test_the_sweep_shows_each_running_run_s_step(tmp_path):
    from zofo.sweep import last_step

    (tmp_path / "log.jsonl").write_text('{"step": 11, "train_loss": 0.5}\n{"step": 12, "val_loss": 0.4}\n')
    assert last_step(tmp_path) == "12"
    assert last_step(tmp_path / "nowhere") == "0"
