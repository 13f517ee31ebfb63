"""scripts/slim_runs.py: a finished run kept under results/ loses bulk, not what the tables, reports and
`zofo replay` read; what it drops is first copied whole."""

import gzip
import hashlib
import json
import shutil
import sys

from safetensors.torch import load_file

from zofo.cli import main
from zofo.records import read_records
from zofo.report import build_table, find_runs, points

from conftest import REPO
from test_mezo import assert_bit_identical, mezo_args

sys.path.insert(0, str(REPO / "scripts"))

import slim_runs  # noqa: E402


def gzipped(run, name):
    (run / f"{name}.gz").write_bytes(gzip.compress((run / name).read_bytes()))
    (run / name).unlink()


def test_a_slimmed_mezo_run_replays_its_tested_model_and_reports_the_same(tmp_path, data_dir, monkeypatch):
    results = tmp_path / "results" / "sweep" / "runs"
    run = results / "seed=0"
    assert main(mezo_args(data_dir, run, "--peft", "none", "--steps", "24", "--eval-every", "4")) == 0
    for name in ("log.jsonl", "trajectory.jsonl"):  # as scripts/collect_runs.sh keeps them
        gzipped(run, name)
    shutil.copy(run / "config.yaml", run / "sweep_config.yaml")  # as a sweep's run has it
    tuning = results / "lr=1e-3"  # a tuning run is told by its config (test: false), wherever it is
    shutil.copytree(run, tuning, ignore=shutil.ignore_patterns("model"))
    config = (tuning / "config.yaml").read_text()
    assert "\ntest: true\n" in config
    (tuning / "config.yaml").write_text(config.replace("\ntest: true\n", "\ntest: false\n"))
    bar = "mezo:  {0}%|##| {0}/100 [00:01<00:00]"
    (run / "output.log").write_text("start\n" + "".join("\r" + bar.format(p) for p in range(0, 101, 10)) + "\n"
                                    + bar.format(40) + "RuntimeError: kept\n" + bar.format(50) + "\n"
                                    + bar.format(100) + "\ndone\n")
    before = {name: (run / name).read_bytes() for name in ("log.jsonl.gz", "trajectory.jsonl.gz", "output.log")}
    metrics = json.loads((run / "metrics.json").read_text())
    table_before = build_table(find_runs([results]))
    curves_before = [points(r, "step", "val_loss") for r in find_runs([results])]
    monkeypatch.setattr(slim_runs, "TRAINING_RECORDS", 5)
    monkeypatch.setattr(slim_runs, "TUNING_TRAINING_RECORDS", 3)
    monkeypatch.chdir(tmp_path)

    assert slim_runs.main(["results"]) == 0

    # the training log: every evaluation record, at most 5 (+ the last) training records
    records = read_records(run / "log.jsonl")
    full = [json.loads(line) for line in gzip.decompress(before["log.jsonl.gz"]).splitlines()]
    assert [r for r in records if "val_loss" in r] == [r for r in full if "val_loss" in r]
    training = [r for r in records if "train_loss" in r and "val_loss" not in r]
    assert len(training) <= 6 and training[-1] == [r for r in full if "train_loss" in r][-1]
    assert len([r for r in read_records(tuning / "log.jsonl") if "val_loss" not in r]) <= 4
    # the trajectory up to the selected step: the default replay is the model the test scored, bit for bit
    steps = [r["step"] for r in read_records(run / "trajectory.jsonl")[1:]]
    assert steps == list(range(1, metrics["best_step"] + 1))
    assert main(["replay", str(run), "--output", str(tmp_path / "replayed")]) == 0
    assert_bit_identical(load_file(run / "model" / "model.safetensors"),
                         load_file(tmp_path / "replayed" / "model.safetensors"))
    # progress bars, redrawn after \r or on following lines, keep their last state; other text stays
    assert (run / "output.log").read_text() == \
        f"start\n{bar.format(100)}\n{bar.format(40)}RuntimeError: kept\n{bar.format(100)}\ndone\n"
    # a tuning run keeps what chose its setting, not its trajectory; no run keeps its plot (drawn from its log)
    assert not (tuning / "trajectory.jsonl.gz").exists() and not (tuning / "loss_curves.png").exists()
    assert not (run / "loss_curves.png").exists() and (tmp_path / "results-full" / run.relative_to(tmp_path) /
                                                       "loss_curves.png").stat().st_size > 1000
    assert not (run / "sweep_config.yaml").exists()  # the same bytes as config.yaml
    # the tables and validation curves read the same numbers
    assert build_table(find_runs([results])) == table_before
    assert [points(r, "step", "val_loss") for r in find_runs([results])] == curves_before
    # the originals, whole, outside git; what was done, in the run
    copies = tmp_path / "results-full" / "results" / "sweep" / "runs" / "seed=0"
    assert {name: (copies / name).read_bytes() for name in before} == before
    said = json.loads((run / "slimmed.json").read_text())
    assert set(said) == {"full copies", "output.log", "log.jsonl.gz", "trajectory.jsonl.gz", "sweep_config.yaml",
                         "loss_curves.png", "metrics"}

    # a second pass leaves a slimmed run as it is; a pass cut short (no slimmed.json yet) slims from the copies
    # again, so what it writes is the same, not thinned twice
    after = {path: path.read_bytes() for path in run.iterdir() if path.is_file()}
    assert slim_runs.main(["results"]) == 0
    assert {path: path.read_bytes() for path in run.iterdir() if path.is_file()} == after
    (run / "slimmed.json").unlink()  # its 6 kept training records, read again, would be thinned to 4
    assert slim_runs.main(["results"]) == 0
    assert {path: path.read_bytes() for path in run.iterdir() if path.is_file()} == after

    # a run slimmed before plots were dropped (its slimmed.json does not say so) loses its plot, nothing else
    old_said = {k: v for k, v in said.items() if k != "loss_curves.png"}
    (run / "slimmed.json").write_text(json.dumps(old_said))
    shutil.copy(copies / "loss_curves.png", run / "loss_curves.png")
    (copies / "loss_curves.png").unlink()
    assert slim_runs.main(["results"]) == 0
    assert not (run / "loss_curves.png").exists() and (copies / "loss_curves.png").stat().st_size > 1000
    assert json.loads((run / "slimmed.json").read_text()) == said
    assert {path: path.read_bytes() for path in run.iterdir() if path.is_file() and path.name != "slimmed.json"} == \
        {path: data for path, data in after.items() if path.name != "slimmed.json"}

    # a run redone in its folder (zofo train --overwrite: other metrics) is slimmed anew, from its own files
    (run / "log.jsonl.gz").write_bytes(before["log.jsonl.gz"])
    (run / "metrics.json").write_text(json.dumps({**metrics, "train_seconds": 123.0}))
    assert slim_runs.main(["results"]) == 0
    assert (run / "log.jsonl.gz").read_bytes() == after[run / "log.jsonl.gz"]
    assert (copies / "log.jsonl.gz").read_bytes() == before["log.jsonl.gz"]
    assert json.loads((run / "slimmed.json").read_text())["metrics"] == \
        hashlib.sha256((run / "metrics.json").read_bytes()).hexdigest()
