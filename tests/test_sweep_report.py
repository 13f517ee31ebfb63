import csv
import json
import re
import time
from pathlib import Path

import pytest
import torch
import yaml

from zofo.cli import main
from zofo.config import make_config
from zofo.experiment import run_training
from zofo.report import build_table, find_runs, first_order_curves, write_report
from zofo.runs import held_by_a_run
from zofo.sweep import expand, load_sweep, run_names, set_aside_if_begun_otherwise


def write_sweep(path, data_dir, out_dir, **extra):
    sweep = {
        "out_dir": str(out_dir), "parallel": 2,
        "base": {"model": "tiny-llama", "task": "copa", "n_train": 8, "n_val": 4, "n_test": 4, "steps": 2,
                 "eval_every": 2, "batch_size": 2, "device": "cpu", "data_dir": str(data_dir), "zero_shot": False},
        "variants": [{"method": "mezo", "peft": "none", "lr": 1e-3}, {"method": "fo", "peft": "lora"}],
        "grid": {"seed": [0, 1]}, **extra,
    }
    path.write_text(yaml.safe_dump(sweep))
    return path


def test_grid_times_variants_with_names_from_the_varying_fields(tmp_path, data_dir):
    sweep = load_sweep(write_sweep(tmp_path / "s.yaml", data_dir, tmp_path / "runs", grid={"seed": [0, 1], "task": ["copa", "cb"]}))
    runs = expand(sweep)
    assert len(runs) == 2 * 2 * 2
    names = run_names(runs)
    assert {"task=copa", "method=mezo", "peft=none", "lr=0.001", "seed=0"} in [set(n.split(",")) for n in names]
    assert {"task=cb", "method=fo", "peft=lora", "seed=1"} in [set(n.split(",")) for n in names]
    assert len(set(names)) == 8


def test_a_bad_field_in_a_sweep_fails_before_anything_runs(tmp_path, data_dir):
    path = write_sweep(tmp_path / "s.yaml", data_dir, tmp_path / "runs", grid={"sedd": [0]})
    with pytest.raises(ValueError, match="sedd"):
        expand(load_sweep(path))


def test_one_run_s_config_given_to_zofo_sweep_says_to_train_it(tmp_path, capsys):
    path = tmp_path / "cb-lora.yaml"
    path.write_text("task: cb\nmethod: fo\npeft: lora\nlr: 1.0e-4\n")
    assert main(["sweep", str(path), "--dry-run"]) == 2
    assert f"one run's config: `zofo train --config {path}`" in capsys.readouterr().err
    path.write_text("grid: {seed: [0]}\nsteps: 5\n")  # a sweep with a stray key: no such hint
    with pytest.raises(ValueError, match=r"unknown sweep key\(s\) \['steps'\]; allowed: .*'variants'\]$"):
        load_sweep(path)


def test_sweep_runs_side_by_side_and_resumes_without_rerunning_finished_runs(tmp_path, data_dir, capsys):
    path = write_sweep(tmp_path / "s.yaml", data_dir, tmp_path / "runs")
    assert main(["sweep", str(path)]) == 0
    finished = sorted((tmp_path / "runs").glob("*/metrics.json"))
    assert len(finished) == 4
    stamps = {p: p.stat().st_mtime_ns for p in finished}
    finished[0].unlink()  # as if the sweep had been killed before this run ended
    capsys.readouterr()
    assert main(["sweep", str(path)]) == 0
    assert "3 finished, 1 to run" in capsys.readouterr().out
    for p in finished[1:]:
        assert p.stat().st_mtime_ns == stamps[p], f"{p} was run again"
    assert finished[0].exists()


def fake_run(folder, task, method, seed, test, zero_shot, lam=None, log=None, hard_prompt=True, **other_tests):
    folder.mkdir(parents=True)
    config = {"task": task, "method": method, "peft": "lora", "seed": seed, "bilevel_lambda": lam or 10.0,
              "hard_prompt": hard_prompt}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    metric = "macro_f1" if task == "cb" else "accuracy"
    (folder / "metrics.json").write_text(json.dumps({"test": {metric: test}, "zero_shot": {metric: zero_shot},
                                                     **{key: {metric: value} for key, value in other_tests.items()}}))
    log = log or [{"step": s, "val_loss": 1.0 / s} for s in (1, 2, 3)]
    (folder / "log.jsonl").write_text("".join(json.dumps(record) + "\n" for record in log))


def test_report_rebuilds_mean_and_std_over_seeds_with_plots(tmp_path):
    runs = tmp_path / "runs"
    for seed, (a, b) in enumerate([(0.80, 0.60), (0.90, 0.70), (0.85, 0.65)]):
        fake_run(runs / f"sst2-mezo-{seed}", "sst2", "mezo", seed, a, 0.5)
        fake_run(runs / f"cb-mezo-{seed}", "cb", "mezo", seed, b, 0.4)
    for lam, value in ((1.0, 0.7), (100.0, 0.9)):
        fake_run(runs / f"sst2-bilevel-{lam}", "sst2", "bilevel", 0, value, 0.5, lam=lam)
    header, rows, records = build_table(find_runs([runs]))
    assert header == ["method", "evaluated", "peft", "bilevel_lambda", "cb", "sst2", "average"]
    mezo = next(row for row in rows if row[0] == "mezo")
    assert mezo == ["mezo", "", "lora", "", "65.0 ± 5.0 (3)", "85.0 ± 5.0 (3)", "75.0"]
    assert rows[0] == ["zero-shot", "", "", "", "40.0 ± 0.0 (3)", "50.0 ± 0.0 (5)", ""]  # the base model, every run's
    cb = next(r for r in records if r["task"] == "cb")
    assert cb["metric"] == "macro_f1" and cb["zero_shot_mean"] == pytest.approx(0.4)

    out = write_report([runs], tmp_path / "report")
    assert "85.0 ± 5.0 (3)" in (out / "table.md").read_text()
    with open(out / "table.csv") as f:
        assert len(list(csv.DictReader(f))) == len(records)
    assert (out / "val_loss_curves.png").stat().st_size > 1000
    assert (out / "metric_vs_bilevel_lambda.png").stat().st_size > 1000
    assert not (out / "val_loss_first_order_steps.png").exists()  # no Bilevel run logged θ+z's validation loss


def test_the_chosen_values_read_one_line_a_cell_with_its_seeds_and_sweep(tmp_path):
    """Table 2's report lists 114 runs' choices: one line per seed repeated each cell's, and a MeZO-full run
    (`task=cb,seed=0`) did not say which sweep it came from."""
    for sweep, method, lr in (("lora", "fo", 1e-4), ("full", "mezo", 1e-5)):
        for seed in (0, 1, 2):
            folder = tmp_path / sweep / "runs" / f"task=cb,seed={seed}"
            fake_run(folder, "cb", method, seed, 0.5, 0.4)
            (folder / "tuned.yaml").write_text(yaml.safe_dump({"chosen": {"lr": lr}}))
    table = (write_report([tmp_path / "lora", tmp_path / "full"], tmp_path / "report") / "table.md").read_text()
    chosen = table.split("Chosen on validation")[1].strip().splitlines()[1:]
    assert chosen == ["- full: task=cb (seeds 0, 1, 2): lr=1e-05", "- lora: task=cb (seeds 0, 1, 2): lr=0.0001"]


def test_rows_follow_a_numeric_field_by_size_not_as_text(tmp_path):
    """The K ablation's table read K 1, 10, 20, 30, 5 while its rows were ordered as text."""
    runs = tmp_path / "runs"
    for lam in (30.0, 5.0, 10.0, 100.0):
        fake_run(runs / f"lam-{lam}", "sst2", "bilevel", 0, 0.8, 0.5, lam=lam, test_theta_z=0.8, test_theta_alone=0.5)
    _, rows, _ = build_table(find_runs([runs]))
    views = [(row[1], row[3]) for row in rows if row[0] == "bilevel"]
    assert views == [(view, lam) for view in ("θ+φ", "θ+z", "θ alone") for lam in ("5.0", "10.0", "30.0", "100.0")]


def test_a_value_at_which_every_seed_diverged_before_validation_is_a_record_without_mean_and_marked_on_the_plot(
        tmp_path, monkeypatch):
    """The λ ablation's SST-2 λ 1e5 and 1e6: no seed had a step to test, so the cell has no mean; the plot against
    λ left those values out without a sign until it marked them on its axis."""
    from matplotlib.axes import Axes

    runs = tmp_path / "runs"
    fake_run(runs / "lam-1", "sst2", "bilevel", 0, 0.8, 0.5, lam=1.0)
    fake_run(runs / "lam-1e6", "sst2", "bilevel", 0, 0.5, 0.5, lam=1e6)
    metrics = runs / "lam-1e6" / "metrics.json"
    metrics.write_text(json.dumps({"test": None, "zero_shot": {"accuracy": 0.5}, "best_step": None,
                                   "diverged": "the training loss became nan at step 33"}))
    _, _, records = build_table(find_runs([runs]))
    untested = [r for r in records if r["mean"] is None]
    assert {r["evaluated"] for r in untested} == {"θ+φ", "θ+z", "θ alone"}
    assert all(r["bilevel_lambda"] == 1e6 and r["seeds"] == 0 and r["diverged"] == 1 for r in untested)
    scattered = []
    original = Axes.scatter
    monkeypatch.setattr(Axes, "scatter", lambda self, x, y, **kw: scattered.append((kw.get("marker"), list(x))) or
                        original(self, x, y, **kw))
    write_report([runs], tmp_path / "report")
    assert scattered and all(call == ("v", [1e6]) for call in scattered)  # one triangle a row, at λ 1e6
    with open(tmp_path / "report" / "table.csv") as f:
        assert sum(1 for row in csv.DictReader(f) if row["mean"] == "" and row["diverged"] == "1") == 3


def test_runs_with_and_without_the_hard_prompt_are_also_reported_as_the_papers_table_1(tmp_path):
    runs = tmp_path / "runs"
    for seed, (with_prompt, without) in enumerate([(0.80, 0.50), (0.90, 0.54)]):
        fake_run(runs / f"sst2-{seed}", "sst2", "mezo", seed, with_prompt, 0.5)
        fake_run(runs / f"sst2-no-prompt-{seed}", "sst2", "mezo", seed, without, 0.5, hard_prompt=False)
    fake_run(runs / "copa-0", "copa", "mezo", 0, 0.60, 0.5)  # not yet run without the prompt
    table = (write_report([runs], tmp_path / "report") / "table.md").read_text()
    sensitivity = table[table.index("Prompt sensitivity"):]
    assert "| method | peft | task | with the hard prompt | without | difference (without − with) |" in sensitivity
    assert "| mezo | lora | sst2 | 85.0 ± 7.1 (2) | 52.0 ± 2.8 (2) | -33.0 ± 7.6 |" in sensitivity  # √(7.07² + 2.83²)
    assert "| mezo | lora | copa | 60.0 ± 0.0 (1) |  |  |" in sensitivity
    only_with = tmp_path / "only-with"
    fake_run(only_with / "sst2-0", "sst2", "mezo", 0, 0.80, 0.5)
    assert "Prompt sensitivity" not in (write_report([only_with], tmp_path / "r2") / "table.md").read_text()


def test_a_report_of_a_folder_that_does_not_exist_fails_before_writing_anything(tmp_path, capsys):
    fake_run(tmp_path / "runs" / "fo-0", "sst2", "fo", 0, 0.75, 0.5)
    assert main(["report", str(tmp_path / "runs"), str(tmp_path / "rnus")]) != 0
    assert f"no such folder: {tmp_path / 'rnus'}" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "report").exists()


def test_a_bilevel_run_reports_theta_with_phi_with_z_and_alone_in_rows_of_their_own(tmp_path):
    runs = tmp_path / "runs"
    for seed, (phi, z, alone) in enumerate([(0.80, 0.70, 0.50), (0.90, 0.80, 0.52)]):
        fake_run(runs / f"bilevel-{seed}", "sst2", "bilevel", seed, phi, 0.5, test_theta_z=z, test_theta_alone=alone)
        fake_run(runs / f"fo-{seed}", "sst2", "fo", seed, 0.75, 0.5)
    header, rows, _ = build_table(find_runs([runs]))
    assert header == ["method", "evaluated", "peft", "sst2"]
    assert rows == [["zero-shot", "", "", "50.0 ± 0.0 (4)"],  # each run's zero-shot once
                    ["bilevel", "θ+φ", "lora", "85.0 ± 7.1 (2)"], ["bilevel", "θ+z", "lora", "75.0 ± 7.1 (2)"],
                    ["bilevel", "θ alone", "lora", "51.0 ± 1.4 (2)"], ["fo", "", "lora", "75.0 ± 0.0 (2)"]]
    assert "4 runs from" in (write_report([runs], tmp_path / "report") / "table.md").read_text()


def test_bilevel_theta_z_is_plotted_against_fo_peft_by_first_order_steps(tmp_path):
    """z takes K of every K + 1 steps: its curve is drawn at lower_steps, FO-PEFT's at its steps."""
    runs = tmp_path / "runs"
    log = [{"step": 11 * c, "val_loss": 0.6, "val_loss_theta_z": 0.5 + c / 100, "lower_steps": 10 * c, "upper_steps": c}
           for c in (1, 2)]
    fake_run(runs / "bilevel-0", "sst2", "bilevel", 0, 0.8, 0.5, log=log, test_theta_z=0.7, test_theta_alone=0.5)
    fake_run(runs / "fo-0", "sst2", "fo", 0, 0.75, 0.5)
    fake_run(runs / "mezo-0", "sst2", "mezo", 0, 0.7, 0.5)
    by_method = {run["config"].method: first_order_curves(run) for run in find_runs([runs]) if run["primary"]}
    assert by_method == {"bilevel": [(" (θ+z)", [(10, 0.51), (20, 0.52)])],
                         "fo": [("", [(1, 1.0), (2, 0.5), (3, 1.0 / 3)])], "mezo": []}
    out = write_report([runs], tmp_path / "report")
    assert (out / "val_loss_first_order_steps.png").stat().st_size > 1000


def kill_sweep_mid_run(path, folder, steps):
    """SIGKILL the sweep once its run has logged `steps` steps; wait until the run, sent SIGTERM by the sweep's
    death, has checkpointed and let go of its folder."""
    from test_resume import kill_when

    kill_when(["sweep", str(path)], folder / "log.jsonl", steps)
    for _ in range(600):
        if not held_by_a_run(folder):
            break
        time.sleep(0.05)
    assert (folder / "checkpoint.pt").exists() and not (folder / "metrics.json").exists()


def test_a_killed_sweep_resumes_its_partial_run_from_the_checkpoint(tmp_path, data_dir, capsys):
    path = write_sweep(tmp_path / "s.yaml", data_dir, tmp_path / "runs", grid={"seed": [0]},
                       variants=[{"method": "fo", "peft": "lora"}])
    sweep = yaml.safe_load(path.read_text())
    sweep["base"].update(steps=60, eval_every=10, n_train=32)
    path.write_text(yaml.safe_dump(sweep))
    folder = tmp_path / "runs" / "run"
    kill_sweep_mid_run(path, folder, 45)
    checkpointed = torch.load(folder / "checkpoint.pt", weights_only=True)["step"]
    assert 45 <= checkpointed < 60
    capsys.readouterr()
    assert main(["sweep", str(path), "--dry-run"]) == 0  # what is left, counted from the checkpoint's step
    assert f"0 finished, 1 to run (1 resume from a checkpoint): about {60 - checkpointed} steps to run" in capsys.readouterr().out
    assert main(["sweep", str(path)]) == 0
    assert "0 finished, 1 to run (1 resume from a checkpoint)" in capsys.readouterr().out
    assert "resuming" in (folder / "output.log").read_text()
    resumed = json.loads((folder / "metrics.json").read_text())

    fields = {**sweep["base"], "method": "fo", "peft": "lora", "seed": 0, "out_dir": str(tmp_path / "whole")}
    whole = run_training(make_config(fields))
    assert (resumed["best_step"], resumed["best_val_loss"], resumed["test"]) == \
        (whole["best_step"], whole["best_val_loss"], whole["test"])


def test_a_partial_run_begun_with_other_values_is_set_aside_and_run_afresh(tmp_path, data_dir, capsys):
    path = write_sweep(tmp_path / "s.yaml", data_dir, tmp_path / "runs", grid={"seed": [0]},
                       variants=[{"method": "fo", "peft": "lora", "lr": 1e-4}])
    sweep = yaml.safe_load(path.read_text())
    sweep["base"].update(steps=60, eval_every=10, n_train=32)
    path.write_text(yaml.safe_dump(sweep))
    folder = tmp_path / "runs" / "run"
    kill_sweep_mid_run(path, folder, 25)
    sweep["variants"][0]["lr"] = 1e-3  # the value changed (as when a grown tuning grid chooses another)
    path.write_text(yaml.safe_dump(sweep))
    capsys.readouterr()
    assert main(["sweep", str(path)]) == 0
    aside = tmp_path / "runs" / "run.superseded-1"
    assert f"started again: {folder} had begun with other values (lr: 0.0001 -> 0.001); what it ran is kept in " \
           f"{aside}" in capsys.readouterr().out
    assert yaml.safe_load((aside / "config.yaml").read_text())["lr"] == 1e-4 and (aside / "log.jsonl").exists()
    assert not (aside / "checkpoint.pt").exists()  # never resumed by this sweep
    assert yaml.safe_load((folder / "config.yaml").read_text())["lr"] == 1e-3
    assert "resuming" not in (folder / "output.log").read_text()
    afresh = json.loads((folder / "metrics.json").read_text())
    whole = run_training(make_config({**sweep["base"], "method": "fo", "peft": "lora", "lr": 1e-3, "seed": 0,
                                      "out_dir": str(tmp_path / "whole")}))
    assert (afresh["best_step"], afresh["best_val_loss"], afresh["test"]) == \
        (whole["best_step"], whole["best_val_loss"], whole["test"])


def test_finished_runs_that_ran_with_other_values_than_the_sweep_now_gives_are_named_and_kept(tmp_path, data_dir,
                                                                                               capsys):
    path = write_sweep(tmp_path / "s.yaml", data_dir, tmp_path / "runs")
    assert main(["sweep", str(path)]) == 0
    sweep = yaml.safe_load(path.read_text())
    sweep["base"]["zo_eps"] = 1e-2  # MeZO's runs ran with 1e-3; first-order PEFT does not read it: no matter
    path.write_text(yaml.safe_dump(sweep))
    finished = {p: p.stat().st_mtime for p in (tmp_path / "runs").glob("*/metrics.json")}
    capsys.readouterr()
    assert main(["sweep", str(path)]) == 0
    out = capsys.readouterr().out
    assert "4 runs in" in out and "4 finished, 0 to run" in out
    assert re.search(r"2 of the finished ran with other values than the sweep now gives them \(\S+method=mezo\S+: "
                     r"zo\.eps: 0\.001 -> 0\.01; and others\): they stay as they are; delete a run's folder to run it again", out)
    assert {p: p.stat().st_mtime for p in (tmp_path / "runs").glob("*/metrics.json")} == finished


def test_a_run_set_aside_keeps_its_logs_and_leaves_the_new_choice_in_place(tmp_path, data_dir):
    fields = {"model": "tiny-llama", "task": "copa", "method": "mezo", "peft": "none", "lr": 1e-5,
              "data_dir": str(data_dir)}
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(make_config(fields, {"out_dir": str(folder)}).to_dict()))
    for name in ("log.jsonl", "checkpoint.pt", "output.log"):
        (folder / name).write_text("begun")
    assert set_aside_if_begun_otherwise(folder, {**fields, "device": "cpu"}) is None  # how it runs: no matter
    (folder / "tuned.yaml").write_text(yaml.safe_dump({"chosen": {"lr": 1e-4}}))  # the grid grew; a new choice
    changed, aside = set_aside_if_begun_otherwise(folder, {**fields, "lr": 1e-4})
    assert (changed, aside) == ("lr: 1e-05 -> 0.0001", tmp_path / "run.superseded-1")
    assert sorted(p.name for p in aside.iterdir()) == ["config.yaml", "log.jsonl", "output.log"]
    assert [p.name for p in folder.iterdir()] == ["tuned.yaml"]
    (folder / "config.yaml").write_text((aside / "config.yaml").read_text())  # begun again with the old value
    assert set_aside_if_begun_otherwise(folder, {**fields, "lr": 1e-4})[1] == tmp_path / "run.superseded-2"
    (folder / "metrics.json").write_text("{}")
    (folder / "config.yaml").write_text((aside / "config.yaml").read_text())
    assert set_aside_if_begun_otherwise(folder, {**fields, "lr": 1e-4}) is None  # a finished run stays


def test_tuning_runs_choose_each_run_s_value_on_validation_and_never_read_the_test_split(tmp_path, data_dir, capsys):
    path = write_sweep(tmp_path / "s.yaml", data_dir, tmp_path / "runs", grid={"seed": [0, 1]}, tuning={"steps": 3},
                       variants=[{"method": "mezo", "peft": "none", "tune": {"lr": [1e-6, 1e-3]}}])
    assert main(["sweep", str(path)]) == 0
    runs = tmp_path / "runs"
    tuning = sorted((runs / "tuning").iterdir())
    assert [p.name for p in tuning] == ["lr=0.001", "lr=1e-06"]  # seeds 0 and 1 share them
    losses = {}
    for folder in tuning:
        config = yaml.safe_load((folder / "config.yaml").read_text())
        metrics = json.loads((folder / "metrics.json").read_text())
        assert (config["seed"], config["steps"], config["test"], config["zero_shot"]) == (0, 3, False, False)
        assert "test" not in metrics and "zero_shot" not in metrics  # chosen on validation alone
        losses[config["lr"]] = metrics["best_val_loss"]
    best = min(losses, key=losses.get)
    for seed in (0, 1):
        folder = runs / f"seed={seed}"
        assert yaml.safe_load((folder / "config.yaml").read_text())["lr"] == best
        assert yaml.safe_load((folder / "tuned.yaml").read_text())["chosen"] == {"lr": best}
    assert f"**lr={best}**" in (runs / "tuning.md").read_text()

    out = write_report([runs], tmp_path / "report")  # the tuning runs are not rows; the chosen value is listed
    table = (out / "table.md").read_text()
    assert "| method | peft | copa |" in table and "(2) |" in table
    assert f"\n- seeds 0, 1: lr={best}\n" in table  # one line for the cell, its seeds together
    capsys.readouterr()
    assert main(["sweep", str(path)]) == 0  # all finished: nothing runs again
    out = capsys.readouterr().out
    assert "2 tuning runs in" in out and "2 finished, 0 to run" in out


def test_a_tuning_value_that_diverged_is_never_chosen(tmp_path):
    from zofo.sweep import choose

    for name, metrics in {"a": {"best_val_loss": None, "best_step": None, "diverged": "the training loss became nan"},
                          "b": {"best_val_loss": 2.0, "best_step": 4}, "c": {"best_val_loss": 1.5, "best_step": 2}}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(metrics))
    choice = choose([({"lr": 1.0}, tmp_path / "a"), ({"lr": 0.1}, tmp_path / "b"), ({"lr": 0.01}, tmp_path / "c")])
    assert choice["chosen"] == {"lr": 0.01}
    with pytest.raises(ValueError, match="every tuning run diverged"):
        choose([({"lr": 1.0}, tmp_path / "a")])


def test_candidates_tied_on_validation_are_said_to_be_tied(tmp_path):
    from zofo.sweep import choice_line, choose

    for name, loss in {"a": 0.6322, "b": 0.6322, "c": 0.6322, "d": 0.7}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps({"best_val_loss": loss, "best_step": 750}))
    choice = choose([({"lr": 1e-7}, tmp_path / "a"), ({"lr": 1e-6}, tmp_path / "b"), ({"lr": 1e-5}, tmp_path / "c")])
    assert choice["chosen"] == {"lr": 1e-7} and choice["tied"] == [{"lr": 1e-6}, {"lr": 1e-5}]
    assert choice_line(choice) == ("**lr=1e-07** (tied with lr=1e-06; lr=1e-05: the same validation loss, which "
                                   "cannot tell them apart; the first listed is taken)")
    untied = choose([({"lr": 1e-7}, tmp_path / "d"), ({"lr": 1e-6}, tmp_path / "a")])
    assert untied["tied"] == [] and choice_line(untied) == "**lr=1e-06**"


def test_a_diverged_tuning_run_finishes_with_its_result_and_a_diverged_run_fails(tmp_path, data_dir, monkeypatch):
    from zofo.errors import NonFiniteLoss

    monkeypatch.setattr("zofo.data.TaskSet.validation_loss", lambda self, model: float("nan"))
    fields = {"model": "tiny-llama", "task": "copa", "n_train": 8, "n_val": 4, "n_test": 4, "steps": 4, "eval_every": 2,
              "batch_size": 2, "device": "cpu", "data_dir": str(data_dir), "method": "mezo", "peft": "none"}
    metrics = run_training(make_config(fields, {"test": False, "out_dir": str(tmp_path / "tuning")}))
    assert metrics["diverged"].startswith("the validation loss became nan") and metrics["best_val_loss"] is None
    assert (tmp_path / "tuning" / "metrics.json").exists()
    with pytest.raises(NonFiniteLoss):
        run_training(make_config(fields, {"out_dir": str(tmp_path / "run")}))


@pytest.mark.parametrize("method, selected", [({"method": "mezo", "peft": "none"}, 2),
                                              ({"method": "bilevel", "peft": "lora", "bilevel_k": 2}, 3)])
def test_on_divergence_test_best_ends_the_run_and_tests_the_step_selected_before_it(tmp_path, data_dir, monkeypatch,
                                                                                     method, selected):
    """The λ ablation at a fixed learning rate: SST-2 at λ 1e3 and 1e4 became NaN after 600 to 1,400 steps, and a
    failing run was resumed (and failed again) by every sweep after. With test-best it ends, tested at its
    validation-selected step: θ (and Bilevel's φ) after the same steps as a run that stopped there."""
    import torch
    from safetensors.torch import load_file
    from zofo.config import experiment
    from zofo.experiment import load_base_model
    from zofo.methods.base import Method

    losses = iter([1.0])  # the selecting validation loss: 1.0 at the first evaluation, NaN at the second
    monkeypatch.setattr(Method, "validation_loss", lambda self: next(losses, float("nan")))
    fields = {"model": "tiny-llama", "task": "copa", "n_train": 8, "n_val": 4, "n_test": 4, "steps": 6, "eval_every": 2,
              "batch_size": 2, "device": "cpu", "data_dir": str(data_dir), "lr": 1e-3, "zero_shot": False, **method}
    diverged = make_config(fields, {"on_divergence": "test-best", "out_dir": str(tmp_path / "diverged")})
    metrics = run_training(diverged)
    assert metrics["diverged"].startswith(f"the validation loss became nan at step {2 * selected}")
    assert metrics["best_step"] == selected and metrics["best_val_loss"] == 1.0 and "test" in metrics
    losses = iter([1.0] * 9)
    stopped_there = run_training(make_config(fields, {"steps": selected, "out_dir": str(tmp_path / "stopped")}))
    assert "diverged" not in stopped_there and stopped_there["best_step"] == selected
    saved = sorted(p.relative_to(tmp_path / "stopped") for p in (tmp_path / "stopped").rglob("*.safetensors"))
    assert saved == sorted(p.relative_to(tmp_path / "diverged") for p in (tmp_path / "diverged").rglob("*.safetensors"))
    for file in saved:  # θ, and Bilevel's φ, as a run that stopped at the selected step left them
        weights = [load_file(tmp_path / name / file) for name in ("diverged", "stopped")]
        assert weights[0].keys() == weights[1].keys()
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    theta = load_file(tmp_path / "diverged" / "model" / "model.safetensors")
    initial = load_base_model(make_config(fields), torch.device("cpu")).state_dict()
    assert any(not torch.equal(theta[k], initial[k]) for k in theta if k in initial)  # it did train
    # how a run that diverges ends, not what it computes: the same experiment, resumed or copied either way
    assert experiment(diverged, "cpu") == experiment(make_config(fields, {"out_dir": str(tmp_path / "diverged")}), "cpu")

    write_report([tmp_path / "diverged"], tmp_path / "report")
    table = (tmp_path / "report" / "table.md").read_text()
    assert "†1" in table
    assert f"- diverged: tested at step {selected}; the validation loss became nan at step {2 * selected}" in table

    # diverged before its first validation: finished (no sweep runs it again), with no step and no test metric
    losses = iter([])
    early = run_training(make_config(fields, {"on_divergence": "test-best", "out_dir": str(tmp_path / "early")}))
    assert early["test"] is None and early["best_step"] is None and early["diverged"].startswith("the validation loss")
    assert json.loads((tmp_path / "early" / "metrics.json").read_text())["test"] is None
    write_report([tmp_path / "early"], tmp_path / "report-early")
    table = (tmp_path / "report-early" / "table.md").read_text()
    assert "| diverged †1 |" in table and "- early: not tested (no validation before it)" in table
    # a Bilevel run's three rows (θ+φ, θ+z, θ alone) count its seeds alike: the λ ablation's θ+z row read †2
    # where θ+φ read †3, the seed that diverged before validation missing from it
    assert table.count("| diverged †1 |") == (3 if method["method"] == "bilevel" else 1)


def test_a_tuning_run_whose_model_collapsed_is_diverged_and_never_chosen(tmp_path, data_dir, monkeypatch):
    """Seen on the H200: MeZO full at lr 1e-4 on RTE blew up, then scored both candidates alike (validation
    loss ln 2, below the other values' 0.71) with a projected gradient of exactly 0 ever after."""
    import torch
    from zofo.errors import ModelCollapsed

    monkeypatch.setattr("zofo.evaluation.candidates_scored_alike",
                        lambda values, ln_options: torch.tensor([len(values), len(values)], dtype=torch.float32))
    fields = {"model": "tiny-llama", "task": "copa", "n_train": 8, "n_val": 4, "n_test": 4, "steps": 4, "eval_every": 2,
              "batch_size": 2, "device": "cpu", "data_dir": str(data_dir), "method": "mezo", "peft": "none"}
    metrics = run_training(make_config(fields, {"test": False, "out_dir": str(tmp_path / "tuning")}))
    assert metrics["diverged"].startswith("at step 2, the model collapsed") and metrics["best_val_loss"] is None
    with pytest.raises(ModelCollapsed, match="lower the learning rate"):
        run_training(make_config(fields, {"out_dir": str(tmp_path / "run")}))


def test_a_tuning_run_far_off_a_uniform_guess_ends_there_its_best_step_standing(tmp_path, data_dir, monkeypatch):
    """Bilevel-prefix on CB at λ 1e4 (session 25): validation loss 134 at step 253, 114-135 after it, for all of its
    1,000 steps. A tuning run past 10 times a uniform guess's validation loss (ln 2 on COPA) ends there; one that was
    never under it diverged; a run that is tested does not end early."""
    import math
    from zofo.methods.base import Method
    from zofo.records import read_records

    def killed_before_it_finished(*args):
        raise SystemExit("killed")

    def validation_losses(*values):
        losses = iter(values)
        monkeypatch.setattr(Method, "validation_loss", lambda self: next(losses, 0.1))

    fields = {"model": "tiny-llama", "task": "copa", "n_train": 8, "n_val": 4, "n_test": 4, "steps": 8, "eval_every": 2,
              "batch_size": 2, "device": "cpu", "data_dir": str(data_dir), "method": "mezo", "peft": "none",
              "zero_shot": False}
    tuning = make_config(fields, {"test": False, "out_dir": str(tmp_path / "tuning")})
    validation_losses(0.5, 100.0)
    monkeypatch.setattr("zofo.experiment.finish_tuning_run", killed_before_it_finished)
    with pytest.raises(SystemExit):
        run_training(tuning)
    monkeypatch.undo()
    validation_losses()  # the resumed run takes no step: it had ended
    metrics = run_training(tuning.replace(resume=True))
    assert metrics["best_step"] == 2 and metrics["best_val_loss"] == 0.5 and "diverged" not in metrics
    assert metrics["ended_early"] == {"step": 4, "val_loss": 100.0, "uniform_guess_loss": pytest.approx(math.log(2))}
    assert max(record["step"] for record in read_records(tmp_path / "tuning" / "log.jsonl")) == 4

    validation_losses(100.0)
    far_off = run_training(make_config(fields, {"test": False, "out_dir": str(tmp_path / "far")}))
    assert far_off["best_val_loss"] is None and far_off["diverged"].startswith(
        "the validation loss 100 at step 2 is over 10 times a uniform guess's (0.6931), and no evaluation before")

    validation_losses(0.5, 100.0)
    tested = run_training(make_config(fields, {"out_dir": str(tmp_path / "tested")}))
    assert tested["best_step"] == 6 and tested["best_val_loss"] == 0.1 and "ended_early" not in tested


def test_a_tuning_sweep_checks_the_values_to_choose_from_before_anything_runs(tmp_path, data_dir):
    for tune, problem in (({"lr": 1e-3}, "non-empty list"), ({"lr": [-1.0]}, "lr")):
        path = write_sweep(tmp_path / "s.yaml", data_dir, tmp_path / "runs",
                           variants=[{"method": "mezo", "peft": "none", "tune": tune}])
        with pytest.raises(ValueError, match=problem):
            expand(load_sweep(path))


class FakeChild:
    """A `zofo train` child that finishes at once, remembering the GPUs it was shown."""

    shown: list = []

    def __init__(self, command, stdout, stderr, env):
        FakeChild.shown.append(env.get("CUDA_VISIBLE_DEVICES"))
        folder = yaml.safe_load(open(command[-1]))["out_dir"]
        (Path(folder) / "metrics.json").write_text("{}")
        self.returncode = 0

    def poll(self):
        return self.returncode


def test_a_sweep_spreads_its_runs_over_the_gpus_each_run_seeing_one(tmp_path, data_dir, monkeypatch, capsys):
    monkeypatch.setattr("zofo.sweep.subprocess.Popen", FakeChild)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # the sweep's own GPUs: its children get one of these
    FakeChild.shown = []
    path = write_sweep(tmp_path / "s.yaml", data_dir, tmp_path / "runs")
    assert main(["sweep", str(path)]) == 0
    assert FakeChild.shown == ["2", "3", "2", "3"]  # two at a time, on the GPU running fewer
    assert "spread over GPUs 2, 3" in capsys.readouterr().out
    FakeChild.shown = []
    assert main(["sweep", str(write_sweep(tmp_path / "t.yaml", data_dir, tmp_path / "one")), "--gpus", "3"]) == 0
    assert FakeChild.shown == ["3"] * 4
    FakeChild.shown = []
    named = write_sweep(tmp_path / "n.yaml", data_dir, tmp_path / "named")
    sweep = yaml.safe_load(named.read_text())
    sweep["base"]["device"] = "cuda:1"  # a run that names its GPU keeps the sweep's view of the GPUs
    named.write_text(yaml.safe_dump(sweep))
    assert main(["sweep", str(named)]) == 0
    assert FakeChild.shown == ["2,3"] * 4
    FakeChild.shown = []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU: the children's environment as it was
    assert main(["sweep", str(write_sweep(tmp_path / "u.yaml", data_dir, tmp_path / "none"))]) == 0
    assert FakeChild.shown == [""] * 4


class TrackedChild:
    """A `zofo train` child that finishes when first polled, remembering which runs were alive as each started."""

    alive: list = []
    launches: dict = {}

    def __init__(self, command, stdout, stderr, env):
        self.folder, self.returncode = Path(yaml.safe_load(open(command[-1]))["out_dir"]), None
        TrackedChild.launches[self.folder] = list(TrackedChild.alive)
        TrackedChild.alive.append(self.folder)

    def poll(self):
        if self.returncode is None:
            (self.folder / "metrics.json").write_text(json.dumps({"best_val_loss": 1.0, "best_step": 1}))
            TrackedChild.alive.remove(self.folder)
            self.returncode = 0
        return self.returncode


def test_a_run_starts_as_soon_as_its_own_tuning_runs_have_finished(tmp_path, data_dir, monkeypatch):
    from zofo.sweep import plan, tuning_folders

    monkeypatch.setattr("zofo.sweep.subprocess.Popen", TrackedChild)
    TrackedChild.alive, TrackedChild.launches = [], {}
    path = write_sweep(tmp_path / "s.yaml", data_dir, tmp_path / "runs", grid={"seed": [0]}, tuning={"steps": 1},
                       parallel=3, variants=[{"method": "mezo", "peft": "none", "tune": {"lr": [1e-3]}},
                                             {"method": "fo", "peft": "lora", "tune": {"lr": [1e-2, 1e-3]}}])
    sweep = load_sweep(path)
    tuning = tuning_folders(sweep, plan(sweep), tmp_path / "runs")
    mezo_tuned = tuning[0][0][1]  # mezo's one tuning run finished earlier; fo's two are still to run
    mezo_tuned.mkdir(parents=True)
    (mezo_tuned / "metrics.json").write_text(json.dumps({"best_val_loss": 2.0, "best_step": 1}))
    assert main(["sweep", str(path)]) == 0
    fo_tuning = [folder for _, folder in tuning[1]]
    mezo_run, fo_run = (tmp_path / "runs" / name for name in ("method=mezo,peft=none", "method=fo,peft=lora"))
    assert set(TrackedChild.launches) == {*fo_tuning, mezo_run, fo_run}
    assert TrackedChild.launches[mezo_run] == fo_tuning  # started beside fo's tuning runs, not after them
    assert not set(TrackedChild.launches[fo_run]) & set(fo_tuning)  # fo's run waited for its own
    assert yaml.safe_load((fo_run / "sweep_config.yaml").read_text())["lr"] == 1e-2  # the first of equal losses
    notes = (tmp_path / "runs" / "tuning.md").read_text()
    assert "method=mezo,peft=none: **lr=0.001**" in notes and "method=fo,peft=lora: **lr=0.01**" in notes


def test_tuning_notes_say_where_and_how_a_candidate_diverged_or_ended_early(tmp_path, data_dir, monkeypatch):
    from zofo.sweep import plan, tuning_folders

    monkeypatch.setattr("zofo.sweep.subprocess.Popen", TrackedChild)
    TrackedChild.alive, TrackedChild.launches = [], {}
    path = write_sweep(tmp_path / "s.yaml", data_dir, tmp_path / "runs", grid={"seed": [0]}, tuning={"steps": 1},
                       variants=[{"method": "mezo", "peft": "none", "tune": {"lr": [1e-3, 1e-2, 1e-1]}}])
    sweep = load_sweep(path)
    working, collapsed, far_off = [folder for _, folder in tuning_folders(sweep, plan(sweep), tmp_path / "runs")[0]]
    for folder, metrics in ((working, {"best_val_loss": 0.7125, "best_step": 1}),
                            (collapsed, {"best_val_loss": None, "best_step": None, "diverged":
                                         "at step 1000, the model collapsed: it scores the candidates of all 500 ..."}),
                            (far_off, {"best_val_loss": 0.7301, "best_step": 250, "ended_early":
                                       {"step": 500, "val_loss": 134.28, "uniform_guess_loss": 0.6931}})):
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps(metrics))
    assert main(["sweep", str(path)]) == 0
    notes = (tmp_path / "runs" / "tuning.md").read_text()
    assert "**lr=0.001**" in notes and "lr=0.001: val loss 0.7125 at step 1" in notes
    assert "lr=0.01: diverged (at step 1000, the model collapsed)" in notes
    assert ("lr=0.1: val loss 0.7301 at step 250; ended at step 500, its validation loss 134.3 far over a uniform "
            "guess's 0.6931") in notes


def test_a_run_whose_tuning_runs_all_diverged_is_not_run_and_the_others_are(tmp_path, data_dir, monkeypatch, capsys):
    from zofo.sweep import plan, tuning_folders

    monkeypatch.setattr("zofo.sweep.subprocess.Popen", TrackedChild)
    TrackedChild.alive, TrackedChild.launches = [], {}
    path = write_sweep(tmp_path / "s.yaml", data_dir, tmp_path / "runs", grid={"seed": [0]}, tuning={"steps": 1},
                       variants=[{"method": "mezo", "peft": "none", "tune": {"lr": [1e-3]}},
                                 {"method": "fo", "peft": "lora", "tune": {"lr": [1e-2]}}])
    sweep = load_sweep(path)
    diverged = tuning_folders(sweep, plan(sweep), tmp_path / "runs")[0][0][1]
    diverged.mkdir(parents=True)
    (diverged / "metrics.json").write_text(json.dumps({"best_val_loss": None, "diverged": "the loss became nan"}))
    assert main(["sweep", str(path)]) != 0
    assert "every tuning run diverged" in capsys.readouterr().err
    assert tmp_path / "runs" / "method=fo,peft=lora" in TrackedChild.launches  # the other run ran
    assert tmp_path / "runs" / "method=mezo,peft=none" not in TrackedChild.launches
    assert "none chosen (every tuning run diverged" in (tmp_path / "runs" / "tuning.md").read_text()


def test_runs_at_once_must_be_a_whole_number_of_at_least_one(tmp_path, data_dir, capsys):
    for parallel in (0, -2):
        assert main(["sweep", str(write_sweep(tmp_path / "s.yaml", data_dir, tmp_path / "runs")), "--parallel",
                     str(parallel), "--dry-run"]) != 0
        assert f"must be a whole number of at least 1, got {parallel}" in capsys.readouterr().err
    path = write_sweep(tmp_path / "t.yaml", data_dir, tmp_path / "runs", parallel="four")
    assert main(["sweep", str(path), "--dry-run"]) != 0
    assert "got 'four'" in capsys.readouterr().err


def test_the_gpus_to_spread_over_must_be_ids_separated_by_commas(tmp_path, data_dir, capsys):
    with pytest.raises(SystemExit):
        main(["sweep", str(write_sweep(tmp_path / "s.yaml", data_dir, tmp_path / "runs")), "--gpus", "0,,1"])
    assert "expected GPU ids separated by commas" in capsys.readouterr().err


def test_only_runs_the_selected_runs_with_their_own_tuning_runs_and_notes_every_choice(tmp_path, data_dir, monkeypatch, capsys):
    from zofo.sweep import plan, tuning_folders

    monkeypatch.setattr("zofo.sweep.subprocess.Popen", TrackedChild)
    TrackedChild.alive, TrackedChild.launches = [], {}
    path = write_sweep(tmp_path / "s.yaml", data_dir, tmp_path / "runs", grid={"seed": [0, 1], "task": ["copa", "cb"]},
                       tuning={"steps": 1}, variants=[{"method": "mezo", "peft": "none", "tune": {"lr": [1e-3]}},
                                                      {"method": "fo", "peft": "lora", "tune": {"lr": [1e-2, 1e-3]}}])
    sweep = load_sweep(path)
    mezo_copa_tuning = tuning_folders(sweep, plan(sweep), tmp_path / "runs")[0][0][1]  # finished earlier
    mezo_copa_tuning.mkdir(parents=True)
    (mezo_copa_tuning / "metrics.json").write_text(json.dumps({"best_val_loss": 2.0, "best_step": 1}))
    assert main(["sweep", str(path), "--only", "method=fo", "--only", "task=cb,copa", "--only", "seed=1"]) == 0
    runs = tmp_path / "runs"
    launched = {folder.relative_to(runs).as_posix() for folder in TrackedChild.launches}
    assert launched == {"task=copa,method=fo,peft=lora,seed=1", "task=cb,method=fo,peft=lora,seed=1",
                        "tuning/task=copa,method=fo,peft=lora,lr=0.01", "tuning/task=copa,method=fo,peft=lora,lr=0.001",
                        "tuning/task=cb,method=fo,peft=lora,lr=0.01", "tuning/task=cb,method=fo,peft=lora,lr=0.001"}
    notes = (runs / "tuning.md").read_text()  # the runs not selected keep their choices in the notes
    assert "task=copa,method=mezo,peft=none,seed=0: **lr=0.001**" in notes
    assert "task=cb,method=fo,peft=lora,seed=0: **lr=0.01**" in notes
    for only, message in (("task=cb,sts2", "no run of .* has task = sts2; its values: copa, cb"),
                          ("lora_r=4", "no run of .* sets lora_r"), ("task", "--only takes field=value")):
        assert main(["sweep", str(path), "--dry-run", "--only", only]) != 0
        assert re.search(message, capsys.readouterr().err)
    # a value as typed (YAML reads 1e-3 as text) selects the runs whose field is that number
    assert main(["sweep", str(write_sweep(tmp_path / "t.yaml", data_dir, runs)), "--dry-run", "--only", "lr=1e-3"]) == 0
    assert "2 runs in" in capsys.readouterr().out


def test_tuning_only_runs_the_tuning_runs_and_notes_their_choices_and_the_runs_wait(tmp_path, data_dir, monkeypatch,
                                                                                       capsys):
    monkeypatch.setattr("zofo.sweep.subprocess.Popen", TrackedChild)
    TrackedChild.alive, TrackedChild.launches = [], {}
    path = write_sweep(tmp_path / "s.yaml", data_dir, tmp_path / "runs", grid={"seed": [0, 1]}, tuning={"steps": 1},
                       variants=[{"method": "mezo", "peft": "none", "tune": {"lr": [1e-3]}},
                                 {"method": "fo", "peft": "lora", "tune": {"lr": [1e-2, 1e-3]}}])
    assert main(["sweep", str(path), "--tuning-only"]) == 0
    runs = tmp_path / "runs"
    assert {folder.relative_to(runs).parent.as_posix() for folder in TrackedChild.launches} == {"tuning"}
    assert len(TrackedChild.launches) == 3
    assert "method=fo,peft=lora,seed=1: **lr=0.01**" in (runs / "tuning.md").read_text()  # chosen, not yet run
    capsys.readouterr()
    assert main(["sweep", str(path), "--dry-run"]) == 0  # the runs are still to do, with their values known
    assert "3 tuning runs in" in (out := capsys.readouterr().out) and "3 finished, 0 to run" in out
    assert "4 runs in" in out and "0 finished, 4 to run" in out
    path = write_sweep(tmp_path / "t.yaml", data_dir, tmp_path / "other")  # no `tune`: nothing to run alone
    assert main(["sweep", str(path), "--tuning-only"]) != 0
    assert "--tuning-only: no run of" in capsys.readouterr().err


@pytest.mark.parametrize("user_setting", [None, "2"])
def test_a_sweep_run_redraws_its_progress_bars_in_its_log_every_30_seconds_unless_told_otherwise(
        tmp_path, monkeypatch, user_setting):
    from zofo import sweep

    started = {}
    monkeypatch.setattr(sweep.subprocess, "Popen", lambda command, **kwargs: started.update(kwargs))
    env = {} if user_setting is None else {"TQDM_MININTERVAL": user_setting}
    sweep.start_run(tmp_path / "run", {"model": "tiny-llama", "task": "sst2"}, [], env, [])
    assert started["env"]["TQDM_MININTERVAL"] == (user_setting or "30")  # a 10,000-step run wrote 0.8 MB of bars


def test_a_sweep_resumes_its_runs_with_a_checkpoint_before_it_starts_others(tmp_path, monkeypatch):
    from zofo import sweep

    jobs = [sweep.Job(tmp_path / name, {"name": name}) for name in ("a", "b", "c", "d")]
    for job in jobs[2:]:  # c and d began on an earlier machine
        job.folder.mkdir()
        (job.folder / "checkpoint.pt").write_bytes(b"")
    started = []

    class Finished:
        returncode = 0

        def poll(self):
            return 0

    def start_run(folder, fields, gpus, env, busy):
        started.append(fields["name"])
        (folder / "metrics.json").parent.mkdir(exist_ok=True)
        return Finished(), folder, 1, None

    monkeypatch.setattr(sweep, "start_run", start_run)
    monkeypatch.setattr(sweep.time, "sleep", lambda seconds: None)
    sweep.run_jobs(jobs, parallel=1, gpus=[])
    assert started == ["c", "d", "a", "b"]


def test_a_run_another_sweep_has_finished_is_copied_from_it_not_run_again(tmp_path, data_dir, capsys):
    tuned = {"tuning": {"steps": 1}, "variants": [{"method": "mezo", "peft": "none", "tune": {"lr": [1e-6, 1e-3]}}]}
    first = tmp_path / "first"
    assert main(["sweep", str(write_sweep(tmp_path / "a.yaml", data_dir, first, grid={"seed": [0]}, **tuned))]) == 0
    # the same run with the hard prompt and without; eval_batch_size says only how a run runs, not what it computes
    path = write_sweep(tmp_path / "b.yaml", data_dir, tmp_path / "second", grid={"seed": [0], "hard_prompt": [True, False]},
                       reuse=[str(first), str(tmp_path / "not-there")], **tuned)
    sweep = yaml.safe_load(path.read_text())
    sweep["base"]["eval_batch_size"] = 3
    path.write_text(yaml.safe_dump(sweep))
    capsys.readouterr()
    assert main(["sweep", str(path), "--dry-run"]) == 0
    planned = capsys.readouterr().out
    assert f"4 tuning runs in {tmp_path / 'second' / 'tuning'}: 0 finished, 4 to run (0 resume from a checkpoint, " \
           f"2 of them copied from {first})" in planned
    assert "2 runs in" in planned and "2 to run (0 resume from a checkpoint, 1 of them copied from" in planned

    assert main(["sweep", str(path)]) == 0
    copied = {p.parent for p in (tmp_path / "second").rglob("reused.yaml")}
    assert {p.relative_to(tmp_path / "second").as_posix() for p in copied} == {
        "hard_prompt=True", "tuning/hard_prompt=True,lr=1e-06", "tuning/hard_prompt=True,lr=0.001"}
    for folder in copied:
        source = Path(yaml.safe_load((folder / "reused.yaml").read_text())["reused_from"])
        assert source.parent in (first, first / "tuning") and not (folder / "sweep_config.yaml").exists()  # never run
        assert (folder / "metrics.json").read_bytes() == (source / "metrics.json").read_bytes()
    ran = [p.parent for p in (tmp_path / "second").rglob("metrics.json") if p.parent not in copied]
    assert len(ran) == 3 and all((folder / "sweep_config.yaml").exists() for folder in ran)
    chosen = yaml.safe_load((tmp_path / "second" / "hard_prompt=True" / "tuned.yaml").read_text())["chosen"]
    assert chosen == yaml.safe_load((first / "run" / "tuned.yaml").read_text())["chosen"]  # the same choice
    assert len(find_runs([tmp_path / "second"])) == 2
    assert len(find_runs([first, tmp_path / "second"])) == 2  # the copied run once, not once per sweep
    # a GPU draws other ZO directions than this CPU: its runs are other experiments, never copied for these
    capsys.readouterr()
    other = write_sweep(tmp_path / "c.yaml", data_dir, tmp_path / "third", grid={"seed": [0]}, reuse=[str(first)], **tuned)
    assert main(["sweep", str(other), "--dry-run", "--set", "device=cuda"]) == 0
    planned = capsys.readouterr().out
    assert "0 of them copied" in planned  # and the listing says why, and how to plan for the other device:
    assert "2 more of them have finished on cpu, which draws other ZO directions, so they are not copied to run " \
           "here; --set device=cpu plans the sweep for cpu" in planned


def test_a_folder_a_live_run_holds_is_never_copied_over(tmp_path):
    import fcntl

    from zofo.sweep import held_by_a_run

    folder = tmp_path / "run"
    folder.mkdir()
    assert not held_by_a_run(folder)
    with open(folder / ".lock", "a+") as lock:  # as runs.py holds it while a run lives
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert held_by_a_run(folder)
    assert not held_by_a_run(folder)  # the run ended: the lock went with it


def test_reuse_must_list_folders_and_a_folder_named_with_the_flag_must_exist(tmp_path, data_dir, capsys):
    with pytest.raises(ValueError, match="reuse is a list of folders"):
        load_sweep(write_sweep(tmp_path / "s.yaml", data_dir, tmp_path / "runs", reuse=str(tmp_path)))
    path = write_sweep(tmp_path / "t.yaml", data_dir, tmp_path / "runs", reuse=[str(tmp_path / "not-yet")])
    assert main(["sweep", str(path), "--dry-run"]) == 0  # the file's folder may come later
    assert main(["sweep", str(path), "--dry-run", "--reuse", str(tmp_path / "typo")]) == 2
    assert f"--reuse: no such folder: {tmp_path / 'typo'}" in capsys.readouterr().err


def test_a_sweep_stopped_by_sigterm_notes_the_choices_made_and_its_run_checkpoints(tmp_path, data_dir, capsys):
    """A GPU lease ends a sweep with SIGTERM: the choices of the tuning runs that have finished reach tuning.md
    then, not only when the sweep ends by itself, and the run under way checkpoints its step."""
    import signal
    from test_resume import kill_when

    path = write_sweep(tmp_path / "s.yaml", data_dir, tmp_path / "runs", grid={"seed": [0]}, parallel=1,
                       tuning={"steps": 400},
                       variants=[{"method": "mezo", "peft": "none", "tune": {"lr": [1e-3]}},
                                 {"method": "fo", "peft": "lora", "tune": {"lr": [1e-3]}}])
    sweep = yaml.safe_load(path.read_text())
    sweep["base"].update(eval_every=20, n_train=32)  # its log is written at each evaluation
    path.write_text(yaml.safe_dump(sweep))
    runs = tmp_path / "runs"
    mezo, fo = runs / "tuning" / "method=mezo,peft=none", runs / "tuning" / "method=fo,peft=lora"
    # the mezo tuning run runs first (parallel 1), then fo's, stopped a few steps in
    assert kill_when(["sweep", str(path), "--tuning-only"], fo / "log.jsonl", 5, sig=signal.SIGTERM) == 143
    assert (mezo / "metrics.json").exists() and not (fo / "metrics.json").exists()
    assert "method=mezo,peft=none: **lr=0.001**" in (notes := (runs / "tuning.md").read_text())
    assert "method=fo,peft=lora:" not in notes  # its tuning run has not finished
    for _ in range(600):  # the run, sent SIGTERM by the sweep, checkpoints and lets go of its folder
        if not held_by_a_run(fo):
            break
        time.sleep(0.05)
    assert (fo / "checkpoint.pt").exists()
    capsys.readouterr()
    assert main(["sweep", str(path), "--tuning-only", "--dry-run"]) == 0
    assert "1 finished, 1 to run (1 resume from a checkpoint)" in capsys.readouterr().out
