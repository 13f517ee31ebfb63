"""Which methods run the rest of issue 11 with --tf32: the rule written in configs/paper/tf32-check.yaml before its
runs, applied to what has been measured. A method passes if both hold:
  1. the precision check (benchmarks/precision_check.py on the H200, --output JSON lines) moves the projected
     gradient g of the ZO the method does by at most 5 % (relative RMS) in TF32 on SST-2 and on RTE: every
     base weight for MeZO on the full model and for Bilevel's θ, the adapter for MeZO on an adapter; first-order
     PEFT does no ZO;
  2. each of its finished TF32 cells (tf32-check's runs) has a test metric within the range of the fp32 seeds of
     the same cell (Table 2's runs: the same config but the seed and --tf32), widened by one test example, for every model a Bilevel run tests (θ+φ, θ+z,
     θ alone); and it has at least one finished cell.
A method that passes 1 but has a cell of the TF32 sweep not yet finished, or one whose fp32 seeds have not run,
is not decided. Prints one line a finished cell, then one a method.
Usage: PYTHONPATH=src python3 scripts/tf32_rule.py [--config configs/paper/tf32-check.yaml]
         [--tf32 results/tf32-check/runs] [--fp32 results/paper-table2-lora/runs [MORE_RUN_FOLDERS...]]
         [--precision results/benchmarks/precision_check_gpu.jsonl]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from zofo.config import device_type_ran_on, experiment, make_config
from zofo.records import read_records
from zofo.report import EVALUATED, find_runs
from zofo.sweep import load_sweep, plan, run_names

LARGEST_G_CHANGE = 0.05


def method_of(config) -> str:
    """The method as the rule names it: MeZO on the full model and on an adapter are decided apart."""
    if config.method == "mezo":
        return "MeZO full" if config.adapter.peft == "none" else "MeZO adapter"
    return {"fo": "FO-PEFT", "bilevel": "Bilevel"}.get(config.method, config.method)


ZO_ON = {"MeZO full": "full", "Bilevel": "full", "MeZO adapter": "lora", "FO-PEFT": None}  # precision_check's keys


PRECISION_TASKS = ("sst2", "rte")  # the rule's tasks: short and long inputs


def precision_passes(rows: list[dict], method: str) -> tuple[bool | None, str]:
    """Whether the method's ZO passes the precision check (None: not measured on every task), and why."""
    where = ZO_ON[method]
    if where is None:
        return True, "no ZO"
    changes: dict[str, float] = {}
    for row in rows:
        if row["mode"] == "tf32":  # a task measured twice counts by its worse measurement
            changes[row["task"]] = max(changes.get(row["task"], 0.0), row[where]["rel_rms"])
    missing = [task for task in PRECISION_TASKS if task not in changes]
    if missing:
        return None, f"no TF32 precision check on {', '.join(missing)}"
    worst = max(changes.values())
    return worst <= LARGEST_G_CHANGE, "g moves " + ", ".join(f"{100 * v:.1f} % ({t})" for t, v in changes.items())


def cell_key(run: dict) -> tuple:
    """A cell: everything a run computes but its seed and --tf32 (the fp32 seeds of a TF32 cell share it), and the
    model a Bilevel row tests."""
    config = run["config"].model_copy(update={"seed": 0, "tf32": False})
    return (method_of(config), config.adapter.peft, config.data.task, run["fields"].get(EVALUATED, ""),
            experiment(config, device_type_ran_on(run["metrics"])))


def unfinished_methods(sweep_path: Path, folder: Path) -> list[str]:
    """The method of each run of the TF32 sweep that has no finished run (metrics.json) in `folder`."""
    planned = [fields for fields, _ in plan(load_sweep(sweep_path))]
    return [method_of(make_config(fields)) for fields, name in zip(planned, run_names(planned))
            if not (folder / name / "metrics.json").exists()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=Path("configs/paper/tf32-check.yaml"), help="the TF32 sweep")
    parser.add_argument("--tf32", type=Path, default=Path("results/tf32-check/runs"), help="its runs")
    parser.add_argument("--fp32", type=Path, nargs="+", default=[Path("results/paper-table2-lora/runs")],
                        help="the fp32 runs (Table 2's), one folder or more")
    parser.add_argument("--precision", type=Path, default=Path("results/benchmarks/precision_check_gpu.jsonl"))
    args = parser.parse_args(argv)
    for path in (args.config, args.tf32, *args.fp32, args.precision):
        if not path.exists():
            sys.exit(f"tf32_rule: no such file or folder: {path}")
    precision = read_records(args.precision)
    fp32: dict[tuple, list[dict]] = {}
    for run in find_runs(args.fp32):
        if not run["config"].tf32:  # the folders may hold TF32 runs too
            fp32.setdefault(cell_key(run), []).append(run)

    cells_pass: dict[str, list[bool]] = {}
    no_fp32: list[str] = []  # a method for each finished TF32 cell whose fp32 seeds have not run
    for run in sorted(find_runs([args.tf32]), key=cell_key):
        method, peft, task, evaluated, _ = key = cell_key(run)
        seeds = fp32.get(key, [])
        label = " ".join(part for part in (method, peft, task, evaluated) if part)
        if not seeds:
            print(f"{label}: TF32 {100 * run['test']:.1f}, no fp32 run of this cell yet to compare with")
            no_fp32.append(method)
            continue
        one_example = 1 / run["metrics"]["data"]["sizes"]["test"]
        low = min(r["test"] for r in seeds) - one_example
        high = max(r["test"] for r in seeds) + one_example
        within = low - 1e-9 <= run["test"] <= high + 1e-9
        fp32_tests = ", ".join(f"{100 * r['test']:.1f}" for r in seeds)
        print(f"{label}: TF32 {100 * run['test']:.1f} at step {run['metrics']['best_step']}; fp32 seeds {fp32_tests}, "
              f"widened by one test example {100 * low:.1f}-{100 * high:.1f}: {'within' if within else 'outside'}")
        cells_pass.setdefault(method, []).append(within)

    unfinished = unfinished_methods(args.config, args.tf32)
    for method in ZO_ON:
        precise, why = precision_passes(precision, method)
        waiting = unfinished.count(method)
        cells = cells_pass.get(method, [])
        if precise is None:
            verdict = "not decided: the precision check is missing"
        elif not precise:
            verdict = "fp32 (the precision check: over 5 %)"
        elif not all(cells):
            verdict = f"fp32 ({cells.count(False)} of {len(cells)} cells outside the fp32 seeds' range)"
        elif waiting:
            verdict = f"not decided: {waiting} TF32 cell(s) not finished"
        elif method in no_fp32:
            verdict = f"not decided: {no_fp32.count(method)} TF32 cell(s) without fp32 seeds to compare with"
        elif not cells:
            verdict = "not decided: no finished TF32 cell"
        else:
            verdict = "TF32"
        print(f"{method}: {verdict} [{why}; {sum(cells)} of {len(cells)} cells within]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
