"""`zofo report RUNS...`: tables (markdown and CSV, mean ± std over seeds) and plots from run folders.

Runs are grouped by every config field that varies among them except the seed and the run folder;
the task goes in the columns, the other varying fields (method, peft, hard_prompt, λ, K, ...) in the
rows. Each cell is the test metric of the task (accuracy; macro-F1 for CB; F1 for SQuAD/DROP) at the
validation-selected step, as mean ± standard deviation over seeds, with the number of seeds; †N where N of
those runs diverged and were tested at their step selected before the divergence (on_divergence: test-best).
Plots: validation-loss curves per task; Bilevel's θ+z against FO-PEFT by first-order steps taken, where
Bilevel runs logged θ+z's validation loss; and the metric against λ and against K where those vary.
Where runs with and without the hard prompt are both reported, table.md also gives the paper's Table 1 view:
each row's metric with the prompt, without it, and the difference.
A Bilevel run is in three rows, by the model tested at its selected step (`evaluated`): θ with φ (what
ALGORITHM.md selects and tests), θ with z (the authors' code), and θ alone (no adapter): where the gain
comes from.

Meta-training runs (meta-bilevel, meta-mezo, meta-icl) make the paper's Table 4 instead: the MetaICL
setting in the columns; in the rows each method with each way it was meta-tested (zero-shot, tuned,
icl), and the pretrained model's three baselines. A cell is the mean over test tasks and demonstration
seeds, ± the std over the 5 demonstration seeds (one run), or ± the std over the runs' seeds (several).
"""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

from .config import (EXECUTION_FIELDS, META_METHODS, PATHS, RunConfig, device_type_ran_on, experiment, flatten,
                     make_config, read_yaml)
from .errors import ConfigError
from .records import read_json, read_records
from .tasks import get_task

IGNORED = EXECUTION_FIELDS | {"seed", "zero_shot", "test"}  # not what a run trains: what else it evaluates


EVALUATED = "evaluated"  # a row field of Bilevel runs: the model tested (θ+φ, θ+z, θ alone)
BILEVEL_TESTS = (("test_theta_phi", "θ+φ"), ("test_theta_z", "θ+z"), ("test_theta_alone", "θ alone"))


def shown(run: dict, path: str):
    """The field's value, or None where the run's method does not read it (so rows do not split on it)."""
    return run["fields"].get(path) if run["config"].uses(path) else None


def name(path: str) -> str:
    """A field's name in the table (its flag name)."""
    return PATHS.get(path, path)


def bilevel_views(run: dict, metrics: dict, metric: str) -> list[dict]:
    """A Bilevel run as its rows: the model it selected and tested (θ with φ, or with z under
    bilevel.eval_adapter lower), then the other adapter with θ and θ alone, tested at the same step (a run that
    diverged before its first validation: all three rows, untested)."""
    tested = "θ+z" if metrics.get("evaluated_adapter") == "lower" else "θ+φ"
    untested = metrics["test"] is None  # diverged before its first validation: each row still counts it (†N)
    views = [{**run, "fields": {**run["fields"], EVALUATED: tested}}]
    for key, label in BILEVEL_TESTS:
        if label != tested and (untested or key in metrics):
            views.append({**run, "fields": {**run["fields"], EVALUATED: label},
                          "test": None if untested else metrics[key][metric], "zero_shot": None, "primary": False})
    return views


def find_runs(paths: list[str | Path]) -> list[dict]:
    """Every finished run (a folder with config.yaml and metrics.json) under the given paths, but tuning
    runs (test: false: they choose a sweep's values and have no test metrics)."""
    missing = [str(path) for path in paths if not Path(path).is_dir()]
    if missing:  # a mistyped folder would otherwise leave its runs out of the table unnoticed
        raise FileNotFoundError(f"no such folder: {', '.join(missing)}")
    runs, tuning, seen = [], 0, set()
    folders = [m.parent for path in map(Path, paths) for m in sorted(path.rglob("metrics.json"))]
    # a run copied from another sweep (reused.yaml) after its source, so that the source is the one kept
    for folder in sorted(folders, key=lambda folder: (folder / "reused.yaml").exists()):
        if not (folder / "config.yaml").exists():
            continue
        try:
            config: RunConfig = make_config(read_yaml(folder / "config.yaml"), where=f"{folder / 'config.yaml'}: ")
        except ConfigError as error:
            raise ConfigError(f"{error} (a run folder from another zofo version? move it out of the report's "
                              "folders)") from None
        if not config.test:
            tuning += 1
            continue
        metrics = read_json(folder / "metrics.json")
        same = experiment(config, device_type_ran_on(metrics))
        if same in seen:  # one experiment in two sweeps' folders (one copied from the other): counted once
            continue
        seen.add(same)
        tuned = read_yaml(folder / "tuned.yaml") if (folder / "tuned.yaml").exists() else {}
        run = {"folder": folder, "config": config, "fields": flatten(config.to_dict()), "metrics": metrics,
               "tuned": tuned.get("chosen", {}), "primary": True}  # False: a Bilevel run's other rows
        if config.method in META_METHODS:
            runs.append({**run, "meta": True})
            continue
        metric = get_task(config.data.task).metric
        run = {**run, "metric": metric, "test": metrics["test"][metric] if metrics["test"] else None,  # None: diverged
               "zero_shot": metrics.get("zero_shot", {}).get(metric)}
        runs.extend(bilevel_views(run, metrics, metric) if config.method == "bilevel" else [run])
    if not runs:
        skipped = f" ({tuning} tuning runs, which have no test metrics)" if tuning else ""
        raise FileNotFoundError(f"no finished run (config.yaml + metrics.json) under {[str(p) for p in paths]}{skipped}")
    return runs


FIRST = ("method", EVALUATED, "adapter.peft", "data.hard_prompt")  # row labels read best in this order


def varying_fields(runs: list[dict]) -> list[str]:
    """Dotted paths of the fields that tell the rows apart (method and peft always)."""
    keys = dict.fromkeys(k for run in runs for k in run["fields"])
    tuned = {k for run in runs for k in run.get("tuned", {})}  # chosen per run on validation: listed, not rows
    fields = [k for k in keys if k not in IGNORED | tuned and k != "data.task"
              and (k in ("method", "adapter.peft") or len({repr(run["fields"].get(k)) for run in runs
                                                            if run["config"].uses(k)}) > 1)]
    return sorted(fields, key=lambda k: FIRST.index(k) if k in FIRST else len(FIRST))


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def cell(values: list[float]) -> str:
    return summary(*mean_std(values), len(values)) if values else ""


def summary(mean: float, std: float, over: int | str) -> str:
    """A table cell: mean ± std in percent, and what the std is over (the number of seeds, "5 demo seeds")."""
    return f"{100 * mean:.1f} ± {100 * std:.1f} ({over})"


BILEVEL_ORDER = {label: i for i, (_, label) in enumerate(BILEVEL_TESTS)}  # θ+φ, θ+z, θ alone


def row_order(value) -> tuple:
    """A row's place by one field's value: numbers by size (K 5 before K 10, lr 1e-6 before 1e-5), the Bilevel
    views in their order, other text alphabetically, a field the method does not read first."""
    if value is None:
        return (0, 0, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (1, value, "")
    return (2, BILEVEL_ORDER.get(value, len(BILEVEL_ORDER)), str(value))


def build_table(runs: list[dict]) -> tuple[list[str], list[list[str]], list[dict]]:
    """Header, markdown rows, and flat records (one per row × task) for the CSV."""
    fields = varying_fields(runs)
    tasks = sorted({run["config"].data.task for run in runs})
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for run in runs:
        key = tuple(shown(run, f) for f in fields)
        groups.setdefault(key, {}).setdefault(run["config"].data.task, []).append(run)
    header = [name(f) for f in fields] + tasks + (["average"] if len(tasks) > 1 else [])
    rows, records = [], []
    for key in sorted(groups, key=lambda k: tuple(map(row_order, k))):
        row, means = ["" if v is None else str(v) for v in key], []
        for task in tasks:
            members = groups[key].get(task, [])
            values = [m["test"] for m in members if m["test"] is not None]  # None: diverged, no step to test
            diverged = sum(1 for m in members if m["metrics"].get("diverged"))
            shown_value = cell(values) or ("diverged" if diverged else "")
            row.append(f"{shown_value} †{diverged}" if diverged else shown_value)
            if values or diverged:  # a cell none of whose seeds was tested: a record with no mean (the plots mark it)
                mean, std = mean_std(values) if values else (None, None)
                if values:
                    means.append(mean)
                zero = [m["zero_shot"] for m in members if m["zero_shot"] is not None]
                records.append({**{name(f): v for f, v in zip(fields, key)}, "task": task, "metric": members[0]["metric"],
                                "mean": mean, "std": std, "seeds": len(values), "diverged": diverged,
                                "zero_shot_mean": statistics.fmean(zero) if zero else None,
                                "seed_values": ";".join(f"{v:.4f}" for v in values)})
        if len(tasks) > 1:
            row.append(f"{100 * statistics.fmean(means):.1f}" if len(means) == len(tasks) else "")
        rows.append(row)
    return header, zero_shot_rows(runs, fields, tasks) + rows, records


def zero_shot_rows(runs: list[dict], fields: list[str], tasks: list[str]) -> list[list[str]]:
    """The base model before training (each run's zero-shot test), one row per prompt setting."""
    rows = []
    for prompt in sorted({run["config"].data.hard_prompt for run in runs}, key=str):
        label = {"method": "zero-shot", "data.hard_prompt": str(prompt) if "data.hard_prompt" in fields else ""}
        row = [label.get(f, "") for f in fields]
        for task in tasks:
            row.append(cell([r["zero_shot"] for r in runs if r["config"].data.task == task and r["zero_shot"] is not None
                             and r["config"].data.hard_prompt == prompt]))
        if any(row[len(fields):]):
            rows.append(row + ([""] if len(tasks) > 1 else []))
    return rows


def prompt_sensitivity(records: list[dict], fields: list[str]) -> str:
    """The paper's Table 1 where runs with and without the hard prompt are reported: for each row and task, the
    metric with the prompt, without it, and the difference (without − with, in points) ± the two settings'
    standard deviations combined, √(s_with² + s_without²). Empty where the prompt does not vary."""
    if "data.hard_prompt" not in fields:
        return ""
    prompt = name("data.hard_prompt")
    labels = [name(f) for f in fields if f != "data.hard_prompt"] + ["task"]
    settings: dict[tuple, dict[bool, dict]] = {}
    for record in records:
        if record.get(prompt) is not None and record["seeds"]:
            settings.setdefault(tuple(record.get(label) for label in labels), {})[record[prompt]] = record
    rows = []
    for key, by_prompt in settings.items():
        with_prompt, without = by_prompt.get(True), by_prompt.get(False)
        shown_cells = [summary(r["mean"], r["std"], r["seeds"]) if r else "" for r in (with_prompt, without)]
        difference = (f"{100 * (without['mean'] - with_prompt['mean']):+.1f} ± "
                      f"{100 * (with_prompt['std'] ** 2 + without['std'] ** 2) ** 0.5:.1f}"
                      if with_prompt and without else "")
        rows.append(["" if value is None else str(value) for value in key] + shown_cells + [difference])
    header = labels + ["with the hard prompt", "without", "difference (without − with)"]
    return ("\nPrompt sensitivity (the paper's Table 1): the test metric (%) with and without the hard prompt; the "
            "difference of the means ± the two standard deviations combined.\n\n" + markdown(header, rows))


META_MODES = ("zero_shot", "icl", "tuned")


def build_meta_table(runs: list[dict]) -> tuple[list[str], list[list[str]], list[dict]]:
    """Table 4: settings in the columns; the pretrained model's baselines, then each method (and the fields
    that vary among the runs) with each meta-test mode, in the rows."""
    fields = [f for f in varying_fields(runs) if f != "meta.setting"]  # the columns
    settings = sorted({run["config"].meta.setting for run in runs})
    cells: dict[tuple, dict[str, dict]] = {}  # row -> setting -> {run seed: (value, std over demonstration seeds)}
    for run in runs:
        setting, seed, metrics = run["config"].meta.setting, run["config"].seed, run["metrics"]
        key = tuple(shown(run, f) for f in fields)
        for label, results in ((("pretrained",) + ("",) * (len(fields) - 1), metrics.get("pretrained", {})),
                               (key, metrics["test"] or {})):  # None: diverged before any validation
            for mode in META_MODES:
                if mode in results:
                    row = tuple("" if v is None else str(v) for v in label) + (mode.replace("_", "-"),)
                    cells.setdefault(row, {}).setdefault(setting, {})[seed] = (results[mode], results[f"{mode}_std_over_seeds"]
                                                                               if f"{mode}_std_over_seeds" in results else None)
    header = [PATHS[f] for f in fields] + ["meta-test"] + settings + (["average"] if len(settings) > 1 else [])
    order = lambda row: (row[0] != "pretrained", row[:-1], META_MODES.index(row[-1].replace("-", "_")))
    rows, records = [], []
    for row in sorted(cells, key=order):
        line, means = list(row), []
        for setting in settings:
            found = list(cells[row].get(setting, {}).values())
            if not found:
                line.append("")
                continue
            values = [v for v, _ in found]
            mean, std = mean_std(values)
            if len(found) == 1 and found[0][1] is not None:
                std, spread = found[0][1], "5 demo seeds"
            else:
                spread = f"{len(found)} run{'s' if len(found) > 1 else ''}"
            line.append(summary(mean, std, spread))
            means.append(mean)
            records.append({**dict(zip(header, row)), "setting": setting, "mean": mean, "std": std, "spread": spread})
        if len(settings) > 1:
            line.append(f"{100 * statistics.fmean(means):.1f}" if len(means) == len(settings) else "")
        rows.append(line)
    return header, rows, records


def diverged_runs(runs: list[dict]) -> str:
    """The runs that diverged and were tested at their step selected before it (on_divergence: test-best),
    which a cell marks †N (N of its seeds): where and how each diverged."""
    def tested(metrics: dict) -> str:
        step = metrics["best_step"]
        return f"tested at step {step}" if step is not None else "not tested (no validation before it)"

    lines = [f"- {run['folder'].name}: {tested(run['metrics'])}; {run['metrics']['diverged']}"
             for run in sorted(runs, key=lambda r: r["folder"].name) if run["metrics"].get("diverged")]
    return ("\n† N of the cell's seeds diverged: each run ended there and was tested at its step selected on "
            "validation before it (a run that diverged before its first validation has no test metric; a cell "
            "none of whose seeds has one reads 'diverged'):\n" + "\n".join(lines) + "\n") if lines else ""


def tuned_values(runs: list[dict]) -> str:
    """The values each sweep chose on validation (its tuning.md has every candidate's loss): one line per
    cell, its seeds together (a run's folder name without its seed; the sweep's folder where runs come from
    several)."""
    sweeps = {run["folder"].parent.parent.name for run in runs}
    seeds: dict[tuple[str, str], list[int]] = {}
    for run in sorted(runs, key=lambda r: (str(r["folder"].parent), r["config"].seed)):
        if run.get("tuned"):
            cell_name = ",".join(part for part in run["folder"].name.split(",") if not part.startswith("seed="))
            where = f"{run['folder'].parent.parent.name}: " if len(sweeps) > 1 else ""
            chosen = ", ".join(f"{PATHS[k]}={v}" for k, v in run["tuned"].items())
            seeds.setdefault((where + cell_name, chosen), []).append(run["config"].seed)
    said = lambda ss: f"seed{'s' if len(ss) > 1 else ''} {', '.join(map(str, ss))}"
    lines = [f"- {f'{cell_name} ({said(ss)})' if cell_name else said(ss)}: {chosen}"
             for (cell_name, chosen), ss in sorted(seeds.items())]
    return "\nChosen on validation (tuning runs on seed 0, shortened; no test split read):\n" + "\n".join(lines) + "\n" if lines else ""


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def points(run: dict, x: str, y: str) -> list[tuple[float, float]]:
    """(x, y) of the run's log records that have both (a y logged as None, not finite, is left out)."""
    return [(r[x], float(r[y])) for r in read_records(run["folder"] / "log.jsonl") if r.get(y) is not None and x in r]


def plot_curves(runs: list[dict], fields: list[str], path: Path, curves, xlabel: str) -> Path:
    """One panel per task; each run's curves (`curves(run)`: [(label suffix, points)]), one colour per label,
    which its seeds share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({run["config"].data.task for run in runs})
    fields = [f for f in fields if f != EVALUATED]
    label_of = lambda run: ", ".join(f"{PATHS[f]}={shown(run, f)}" for f in fields if shown(run, f) is not None) or "run"
    colors: dict[str, str] = {}
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        labels_seen = set()
        for run in sorted((r for r in runs if r["config"].data.task == task), key=label_of):
            for suffix, curve in curves(run):
                if not curve:
                    continue
                label = label_of(run) + suffix
                xs, ys = zip(*curve)
                color = colors.setdefault(label, f"C{len(colors) % 10}")
                ax.plot(xs, ys, lw=1, alpha=0.8, color=color, label=None if label in labels_seen else label)
                labels_seen.add(label)
        ax.set_title(task)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation loss")
        if labels_seen:  # none where every run diverged before its first validation
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_val_curves(runs: list[dict], fields: list[str], path: Path) -> Path:
    primary = [run for run in runs if run["primary"]]  # a Bilevel run's curve once, not once per model tested
    return plot_curves(primary, fields, path, lambda run: [("", points(run, "step", "val_loss"))], "step")


def first_order_curves(run: dict) -> list[tuple[str, list]]:
    """FO-PEFT's validation loss by its steps; Bilevel's θ+z by z's steps (K of every K + 1 steps, logged as
    lower_steps at each evaluation)."""
    if run["config"].method == "fo":
        return [("", points(run, "step", "val_loss"))]
    if run["config"].method == "bilevel":
        z_is_selected = run["config"].bilevel.eval_adapter == "lower"
        return [(" (θ+z)", points(run, "lower_steps", "val_loss" if z_is_selected else "val_loss_theta_z"))]
    return []


def plot_first_order_curves(runs: list[dict], fields: list[str], path: Path) -> Path | None:
    """Is Bilevel's gain more than z's first-order steps? θ+z against FO-PEFT with the same adapter type at the same
    number of them, for each (task, adapter type) where a Bilevel run logged θ+z's validation loss (runs older
    than that logging have none)."""
    primary = [run for run in runs if run["primary"]]
    curves = {id(run): first_order_curves(run) for run in primary}  # each log read once
    kind = lambda run: (run["config"].data.task, run["config"].adapter.peft)
    logged = {kind(run) for run in primary if run["config"].method == "bilevel" and curves[id(run)][0][1]}
    if not logged:
        return None
    shown_runs = [run for run in primary if curves[id(run)] and kind(run) in logged]  # FO and Bilevel runs
    return plot_curves(shown_runs, fields, path, lambda run: curves[id(run)], "first-order steps of the adapter")


def plot_against(records: list[dict], field: str, path: Path) -> Path:
    """The test metric (mean ± std over seeds) against a numeric config field, one line per task; a cross marks
    a point where some seed diverged (tested at its step selected before the divergence), a triangle on the axis
    a value at which every seed diverged before its first validation (no test metric)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    diverged_shown = untested_shown = False
    for task, tested in sorted({(r["task"], r.get(EVALUATED) or "") for r in records}):
        line = [r for r in records if r["task"] == task and (r.get(EVALUATED) or "") == tested and r.get(field) is not None]
        points = sorted((float(r[field]), r["mean"], r["std"], r["diverged"]) for r in line if r["mean"] is not None)
        if points:
            xs, means, stds, diverged = zip(*points)
            ax.errorbar(xs, [100 * m for m in means], yerr=[100 * s for s in stds], marker="o", capsize=3,
                        label=f"{task} ({tested})" if tested else task)
            crosses = [(x, 100 * m) for x, m, d in zip(xs, means, diverged) if d]
            if crosses:
                ax.scatter(*zip(*crosses), marker="x", s=60, color="black", zorder=3,
                           label=None if diverged_shown else "some seeds diverged")
                diverged_shown = True
        untested = sorted(float(r[field]) for r in line if r["mean"] is None)
        if untested:  # on the x axis: no value to draw
            ax.scatter(untested, [0.03] * len(untested), marker="v", s=60, color="black", zorder=3,
                       transform=ax.get_xaxis_transform(),
                       label=None if untested_shown else "every seed diverged before validation")
            untested_shown = True
    if field == "bilevel_lambda":
        ax.set_xscale("log")
    ax.set_xlabel({"bilevel_lambda": "λ", "bilevel_k": "K (lower steps per upper step)"}.get(field, field))
    ax.set_ylabel("test metric (%)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize="small")  # beside the lines, not over them
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def write_report(paths: list[str | Path], output: str | Path) -> Path:
    runs = find_runs(paths)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    meta = [run for run in runs if run.get("meta")]
    if meta and len(meta) != len(runs):
        raise ConfigError("a report is of single-task runs or of meta-training runs (Table 4), not both: "
                          "give the two kinds' folders to two reports")
    if meta:
        header, rows, records = build_meta_table(runs)
        note = ("Meta-test score (%; macro-F1 for classification tasks, accuracy for QA) of θ at the step selected "
                "on the training tasks' held-out examples: mean over the setting's test tasks and the demonstration "
                "seeds.")
    else:
        header, rows, records = build_table(runs)
        note = "Test metric (%) at the validation-selected step: mean ± std over seeds (number of seeds)."
    fields = [] if meta else varying_fields(runs)
    primary = [run for run in runs if run["primary"]]
    table = markdown(header, rows) + prompt_sensitivity(records, fields) + diverged_runs(primary) + tuned_values(primary)
    (output / "table.md").write_text(f"{note} {len(primary)} runs from {', '.join(map(str, paths))}.\n\n{table}")
    with open(output / "table.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in records for k in r)))
        writer.writeheader()
        writer.writerows(records)
    if not meta:
        plot_val_curves(runs, fields, output / "val_loss_curves.png")
        plot_first_order_curves(runs, fields, output / "val_loss_first_order_steps.png")
        for field in ("bilevel.lambda", "bilevel.k"):
            if field in fields:
                plot_against(records, PATHS[field], output / f"metric_vs_{PATHS[field]}.png")
    print(table)
    print(f"report written to {output}")
    return output
