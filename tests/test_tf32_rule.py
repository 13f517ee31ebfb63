"""scripts/tf32_rule.py: the TF32 rule of configs/paper/tf32-check.yaml, applied to run folders."""

import json
import sys

import yaml

from zofo.config import make_config
from zofo.sweep import load_sweep, plan, run_names

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))

import tf32_rule  # noqa: E402

SWEEP = """out_dir: runs/tf32-check
base: {model: smollm2-135m-instruct, tf32: true, peft: lora, steps: 100}
variants:
  - {method: fo, task: copa, lr: 1.0e-5}
  - {method: mezo, task: copa, lr: 1.0e-3}
  - {method: bilevel, task: copa, lr: 1.0e-7}
  - {method: bilevel, task: sst2, lr: 1.0e-6}
grid:
  seed: [0]
"""


def finished_run(folder, fields, test, theta_z=None):
    """A run folder as `zofo train` leaves it, with only what the rule reads: its config and test metrics."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(make_config(fields).to_dict()))
    metrics = {"test": {"accuracy": test}, "best_step": 500, "data": {"sizes": {"test": 100}}}
    if theta_z is not None:
        metrics |= {"test_theta_z": {"accuracy": theta_z}, "test_theta_alone": {"accuracy": 0.61}}
    (folder / "metrics.json").write_text(json.dumps(metrics))


def precision_rows(full, lora, tasks=("sst2", "rte")):
    return "".join(json.dumps({"task": task, "mode": "tf32", "full": {"rel_rms": full}, "lora": {"rel_rms": lora}})
                   + "\n" for task in tasks)


def test_each_method_gets_tf32_only_when_its_gradient_check_and_every_cell_hold(tmp_path, capsys):
    sweep = tmp_path / "tf32-check.yaml"
    sweep.write_text(SWEEP)
    planned = [fields for fields, _ in plan(load_sweep(sweep))]
    folder = {(f["method"], f["data.task"]): name for f, name in zip(planned, run_names(planned))}  # as the sweep names them
    base = {"model": "smollm2-135m-instruct", "adapter.peft": "lora", "steps": 100}
    fp32, tf32 = tmp_path / "fp32", tmp_path / "tf32"
    for seed, (fo, mezo, phi, z) in enumerate([(0.65, 0.64, 0.68, 0.58), (0.66, 0.61, 0.64, 0.53),
                                               (0.64, 0.63, 0.66, 0.63)]):
        finished_run(fp32 / f"fo{seed}", base | {"method": "fo", "data.task": "copa", "seed": seed}, fo)
        finished_run(fp32 / f"mezo{seed}", base | {"method": "mezo", "data.task": "copa", "seed": seed}, mezo)
        finished_run(fp32 / f"bilevel{seed}", base | {"method": "bilevel", "data.task": "copa", "seed": seed}, phi, z)
    tf32_base = base | {"tf32": True, "seed": 0}
    # FO two test examples above its seeds' range (64-66 widened to 63-67), MeZO's and Bilevel's within
    finished_run(tf32 / folder["fo", "copa"], tf32_base | {"method": "fo", "data.task": "copa"}, 0.68)
    finished_run(tf32 / folder["mezo", "copa"],
                 tf32_base | {"method": "mezo", "data.task": "copa"}, 0.64)
    finished_run(tf32 / folder["bilevel", "copa"],
                 tf32_base | {"method": "bilevel", "data.task": "copa"}, 0.69, theta_z=0.52)  # both at an edge
    precision = tmp_path / "precision.jsonl"
    precision.write_text(precision_rows(full=0.016, lora=0.16))
    arguments = ["--config", str(sweep), "--tf32", str(tf32), "--fp32", str(fp32), "--precision", str(precision)]

    def verdicts():
        assert tf32_rule.main(arguments) == 0
        lines = capsys.readouterr().out.splitlines()
        return {line.split(":")[0]: line.split(": ", 1)[1].split(" [")[0] for line in lines if " [" in line}, lines

    decided, lines = verdicts()
    assert "FO-PEFT lora copa: TF32 68.0 at step 500; fp32 seeds 65.0, 66.0, 64.0, widened by one test example " \
           "63.0-67.0: outside" in lines
    assert decided == {"FO-PEFT": "fp32 (1 of 1 cells outside the fp32 seeds' range)",
                       "MeZO adapter": "fp32 (the precision check: over 5 %)",
                       "Bilevel": "not decided: 1 TF32 cell(s) not finished",  # SST-2's
                       "MeZO full": "not decided: no finished TF32 cell"}

    finished_run(tf32 / folder["bilevel", "sst2"],
                 tf32_base | {"method": "bilevel", "data.task": "sst2"}, 0.86, theta_z=0.86)
    assert verdicts()[0]["Bilevel"] == "not decided: 3 TF32 cell(s) without fp32 seeds to compare with"  # SST-2's
    for seed in range(3):
        finished_run(fp32 / f"bilevel-sst2-{seed}", base | {"method": "bilevel", "data.task": "sst2", "seed": seed},
                     0.85 + seed / 100, 0.85)
    assert verdicts()[0]["Bilevel"] == "TF32"

    precision.write_text(precision_rows(full=0.06, lora=0.16))  # the full model's g moves 6 %: over the rule's 5
    assert verdicts()[0]["Bilevel"] == "fp32 (the precision check: over 5 %)"
    precision.write_text(precision_rows(full=0.016, lora=0.16, tasks=("sst2",)))  # RTE not measured
    assert verdicts()[0]["Bilevel"] == "not decided: the precision check is missing"
