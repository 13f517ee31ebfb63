"""The `zofo` command line.

    zofo train [--config FILE.yaml] [--task sst2 --method fo --peft lora ...]   train, write a run folder
    zofo eval  --task copa [--model M] [--adapter DIR]                          test metrics of a model
    zofo replay RUN_DIR --output DIR                                            weights from base + trajectory
    zofo sweep CONFIG.yaml                                                      a grid of runs, resumable
    zofo report RUNS... [--output DIR]                                          tables and plots from run folders
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing

from .config import TrainConfig, config_fields, load_config, make_config

EVAL_FIELDS = ("task", "model", "hard_prompt", "seed", "data_dir", "n_train", "n_val", "n_test", "max_length",
               "eval_batch_size", "max_new_tokens", "dtype", "device")


def _field_type(field):
    hint = typing.get_type_hints(TrainConfig)[field.name]
    if isinstance(hint, types.UnionType):  # `str | None`
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def add_config_options(parser: argparse.ArgumentParser, names=None) -> None:
    """One --option per TrainConfig field; the default shown in --help is the config's default."""
    for field in config_fields():
        if names is not None and field.name not in names:
            continue
        flag = "--" + field.name.replace("_", "-")
        kind = _field_type(field)
        help_text = f"{field.metadata['help']} (default: {field.default})"
        if kind is bool:
            parser.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=field.name, type=kind, default=None, choices=field.metadata.get("choices"),
                                help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zofo", description="Zeroth-order fine-tuning of language models.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train with one method and write a run folder",
                                description="Train a model; every option can also come from a YAML --config file, "
                                            "which options given here override.")
    train.add_argument("--config", help="YAML file of config fields (see configs/)")
    add_config_options(train)

    evaluate = commands.add_parser("eval", help="evaluate a model (and optional peft adapter) on a task's test sample")
    evaluate.add_argument("--adapter", help="folder of a peft adapter saved by `zofo train` (run folder/adapter)")
    evaluate.add_argument("--split", choices=("test", "validation"), default="test", help="which sample to evaluate (default: test)")
    evaluate.add_argument("--output", help="also write the metrics to this JSON file")
    add_config_options(evaluate, EVAL_FIELDS)

    rebuild = commands.add_parser("replay", help="rebuild a zeroth-order run's weights from the base model and its trajectory",
                                  description="Rebuild the fine-tuned weights of a MeZO run from its config.yaml and "
                                              "trajectory.jsonl alone (bit-identical in fp32 on the device type it ran on).")
    rebuild.add_argument("run_dir", help="run folder with config.yaml and trajectory.jsonl")
    rebuild.add_argument("--step", type=int, help="replay up to this step (default: the run's best step, else its last)")
    rebuild.add_argument("--output", required=True, help="folder to save the rebuilt model (or adapter) to")
    rebuild.add_argument("--device", help="device to rebuild on (default: the run's)")

    sweep = commands.add_parser("sweep", help="run a grid of configs (seeds × hyperparameters), finished runs skipped",
                                description="Run every combination of a sweep YAML (see configs/ and zofo/sweep.py), "
                                            "several at once; runs whose folder holds metrics.json are not run again.")
    sweep.add_argument("config", help="sweep YAML file with out_dir, parallel, base, variants, grid")
    sweep.add_argument("--parallel", type=int, help="runs at once (default: the file's `parallel`, else 1)")
    sweep.add_argument("--dry-run", action="store_true", help="list the runs still to do and stop")
    sweep.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                       help="override a config field in every run (repeatable), e.g. --set steps=500")
    sweep.add_argument("--out-dir", help="folder of the runs (default: the file's out_dir)")

    report = commands.add_parser("report", help="tables (markdown, CSV: mean ± std over seeds) and plots from run folders")
    report.add_argument("runs", nargs="+", help="folders to search for finished runs")
    report.add_argument("--output", help="folder for table.md, table.csv and the PNG plots (default: <first folder>/report)")
    return parser


def _overrides(args: argparse.Namespace) -> dict:
    names = {field.name for field in config_fields()}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def cmd_train(args: argparse.Namespace) -> int:
    from .experiment import run_training

    config = load_config(args.config, **_overrides(args)) if args.config else make_config(**_overrides(args))
    metrics = run_training(config)
    print(json.dumps({k: metrics[k] for k in ("zero_shot", "test", "best_step", "train_seconds") if k in metrics}))
    print(f"run folder: {config.run_dir()}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from peft import PeftModel

    from .models import load_model
    from .training import prepare_data

    config = make_config(**_overrides(args))
    model, tokenizer = load_model(config.model, config.dtype, config.device, seed=config.seed)
    if args.adapter:
        model = PeftModel.from_pretrained(model, args.adapter).eval()
    data = prepare_data(config, tokenizer)
    if args.split == "validation":
        data.test = data.validation
    metrics = {"task": config.task, "model": config.model, "adapter": args.adapter, "split": args.split,
               **data.test_metrics(model, tokenizer)}
    print(json.dumps(metrics))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(metrics, f, indent=2)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .methods.mezo import rebuild
    from .models import load_tokenizer
    from .zo import Trajectory

    folder = Path(args.run_dir)
    overrides = {"device": args.device} if args.device else {}
    config = load_config(folder / "config.yaml", **overrides)
    trajectory = Trajectory(folder / "trajectory.jsonl")
    if not trajectory.path.exists():
        raise FileNotFoundError(f"{trajectory.path} does not exist: only zeroth-order runs have a trajectory")
    step = args.step
    if step is None and (folder / "metrics.json").exists():
        step = json.loads((folder / "metrics.json").read_text()).get("best_step")
    model, space, *_ = rebuild(config, trajectory, until=step)
    space.unpack()
    model.save_pretrained(args.output)
    if not hasattr(model, "peft_config"):
        load_tokenizer(config.model).save_pretrained(args.output)
    print(f"replayed {len(trajectory.read(step))} steps of {trajectory.path} into {args.output}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import parse_overrides, run_sweep

    run_sweep(args.config, parallel=args.parallel, dry_run=args.dry_run, overrides=parse_overrides(args.set),
              out_dir=args.out_dir)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .report import write_report

    write_report(args.runs, args.output or Path(args.runs[0]) / "report")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"train": cmd_train, "eval": cmd_eval, "replay": cmd_replay, "sweep": cmd_sweep, "report": cmd_report}
    try:
        return commands[args.command](args)
    except (ValueError, FileNotFoundError) as error:
        # Configuration and data mistakes: a one-line message a person can act on, not a traceback.
        print(f"zofo {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
