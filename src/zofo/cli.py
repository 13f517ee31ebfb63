"""The `zofo` command line.

    zofo train [--config FILE.yaml] [--task sst2 --method fo --peft lora ...]   train, write a run folder
    zofo eval  RUN_DIR                                                          test what a run tested, again
    zofo eval  --task copa [--model M] [--adapter DIR]                          test any model (and adapter)
    zofo replay RUN_DIR --output DIR                                            weights from base + trajectory
    zofo sweep CONFIG.yaml                                                      a grid of runs, resumable
    zofo report RUNS... [--output DIR]                                          tables and plots from run folders

Every mistake a person can fix (a config value, a missing file, a run folder in use) ends in one
message and exit code 2, before any slow work where it can be checked first.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import typing
import warnings
from pathlib import Path

from .config import FIELDS, load_config, make_config, parse_assignments, parse_selection
from .errors import ConfigError, RunStopped, ZofoError

EVAL_FIELDS = ("task", "model", "hard_prompt", "seed", "data_dir", "n_test", "max_length", "eval_batch_size",
               "max_new_tokens", "dtype", "device")


def add_config_options(parser: argparse.ArgumentParser, names=None) -> None:
    """One --option per config field, grouped by section. Values stay strings here: the config's types
    convert and check them."""
    groups = {}
    for flag, (path, info) in FIELDS.items():
        if names is not None and flag not in names:
            continue
        section = path.split(".")[0] if "." in path else "run"
        if section not in groups:
            groups[section] = parser.add_argument_group(f"{section} settings" + ("" if section == "run" else f" ({section}: in a config file)"))
        group = groups[section]
        option = "--" + flag.replace("_", "-")
        help_text = info.description + ("" if info.default is None else f" (default: {info.default})")
        if info.annotation is bool:
            group.add_argument(option, dest=flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            continue
        choices = typing.get_args(info.annotation) if typing.get_origin(info.annotation) is typing.Literal else None
        metavar = "{" + ",".join(choices) + "}" if choices else path.rsplit(".", 1)[-1].upper()
        group.add_argument(option, dest=flag, default=None, metavar=metavar, help=help_text)


def gpu_list(text: str) -> list[str]:
    """--gpus 0,1: the GPUs as CUDA_VISIBLE_DEVICES names them."""
    gpus = [gpu.strip() for gpu in text.split(",")]
    if not all(gpus):
        raise argparse.ArgumentTypeError(f"expected GPU ids separated by commas, such as 0,1; got {text!r}")
    return gpus


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zofo", description="Zeroth-order fine-tuning of language models.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train with one method and write a run folder",
                                description="Train a model; every option can also come from a YAML --config file "
                                            "(nested sections or the option names below), which options given here override.")
    train.add_argument("--config", help="YAML file of config fields (see configs/)")
    add_config_options(train)

    evaluate = commands.add_parser("eval", help="evaluate a run's selected model again, or any model on a task",
                                   description="With RUN_DIR: the model the run tested (its model/ and adapter/), on "
                                               "its own test sample. Without: --model (and --adapter) on --task.")
    evaluate.add_argument("run_dir", nargs="?", help="a run folder written by zofo train")
    evaluate.add_argument("--adapter", help="a peft adapter folder to put on --model (not with RUN_DIR)")
    evaluate.add_argument("--split", choices=("test", "validation"), default="test", help="which sample to evaluate (default: test)")
    evaluate.add_argument("--output", help="also write the metrics to this JSON file")
    add_config_options(evaluate, EVAL_FIELDS)

    rebuild = commands.add_parser("replay", help="rebuild a zeroth-order run's weights from the base model and its trajectory",
                                  description="Rebuild the weights a run's zeroth-order steps moved (θ, or MeZO's "
                                              "adapter) from its config.yaml and trajectory.jsonl alone "
                                              "(bit-identical in fp32 on the device type it ran on).")
    rebuild.add_argument("run_dir", help="run folder with config.yaml and trajectory.jsonl")
    rebuild.add_argument("--step", type=int, help="replay up to this step (default: the run's best step, else its last)")
    rebuild.add_argument("--output", required=True, help="folder to save the rebuilt model (or adapter) to")
    rebuild.add_argument("--device", help="device to rebuild on (default: the run's)")

    sweep = commands.add_parser("sweep", help="run a grid of configs (seeds × hyperparameters); resumable",
                                description="Run every combination of a sweep YAML (see configs/ and zofo/sweep.py), "
                                            "several at once. Finished runs are skipped and unfinished ones resume "
                                            "from their last checkpoint: rerun the same command after an interruption.")
    sweep.add_argument("config", help="sweep YAML file with out_dir, parallel, base, variants, grid")
    sweep.add_argument("--parallel", type=int, help="runs at once (default: the file's `parallel`, else 1)")
    sweep.add_argument("--dry-run", action="store_true", help="list the runs still to do and stop")
    sweep.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                       help="override a config field in every run (repeatable), e.g. --set steps=500")
    sweep.add_argument("--only", action="append", default=[], metavar="FIELD=VALUES",
                       help="run only the runs whose FIELD has one of these values (repeatable; each must hold), "
                            "with the tuning runs they need, e.g. --only task=sst2,copa --only method=fo")
    sweep.add_argument("--tuning-only", action="store_true",
                       help="run only the tuning runs (each run's values are then chosen; the runs wait for a sweep "
                            "without this flag), e.g. where device time is too short for a whole run")
    sweep.add_argument("--out-dir", help="folder of the runs (default: the file's out_dir)")
    sweep.add_argument("--gpus", type=gpu_list, metavar="IDS",
                       help="GPUs to spread the runs over, e.g. 0,1 (default: every visible GPU); each run sees one")
    sweep.add_argument("--reuse", action="append", default=[], metavar="FOLDER",
                       help="another sweep's runs (repeatable, added to the file's `reuse`): a run that is the same "
                            "experiment as a finished one there is copied from it, not run again")

    report = commands.add_parser("report", help="tables (markdown, CSV: mean ± std over seeds) and plots from run folders")
    report.add_argument("runs", nargs="+", help="folders to search for finished runs")
    report.add_argument("--output", help="folder for table.md, table.csv and the PNG plots (default: <first folder>/report)")
    return parser


def given_fields(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k in FIELDS and v is not None}


def cmd_train(args: argparse.Namespace) -> int:
    given = given_fields(args)
    config = load_config(args.config, given) if args.config else make_config(given, where="command line: ")
    from . import distributed
    from .experiment import run_training

    try:
        metrics = run_training(config)
    finally:
        distributed.teardown()
    distributed.print_main(json.dumps({k: metrics[k] for k in ("zero_shot", "test", "best_step", "train_seconds")
                                       if k in metrics}))
    distributed.print_main(f"run folder: {config.run_dir()}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    given = given_fields(args)
    if args.run_dir:
        config, model_name, adapter = run_to_evaluate(Path(args.run_dir), args, given)
    else:
        config, model_name, adapter = make_config(given, where="command line: "), None, args.adapter
        if adapter and (Path(adapter).parent / "model").is_dir() and (Path(adapter).parent / "config.yaml").exists():
            raise ConfigError(f"{adapter} was trained together with the base weights in {Path(adapter).parent / 'model'}: "
                              f"evaluate the run instead: zofo eval {Path(adapter).parent}")
    from .adapters import load_adapter
    from .calls import model_calls
    from .data import prepare_task
    from .models import check_model, load_model, load_tokenizer, resolve_device

    device = resolve_device(config.device)
    config.uses_graphs(device)  # refuses --graphs on / --compile without CUDA before anything loads
    model_name = model_name or config.model
    check_model(model_name)
    tokenizer = load_tokenizer(config.model)
    calls = model_calls(config, device, tokenizer.pad_token_id)
    data = prepare_task(config, tokenizer, calls=calls)
    model, tokenizer = load_model(model_name, config.dtype, config.device, seed=config.seed)
    if adapter:
        model = load_adapter(model, adapter)
    examples = data.validation if args.split == "validation" else data.test
    metrics = {"task": config.data.task, "model": model_name, "adapter": adapter, "split": args.split,
               **data.test_metrics(model, tokenizer, examples)}
    print(json.dumps(metrics))
    if args.output:
        Path(args.output).write_text(json.dumps(metrics, indent=2) + "\n")
    return 0


def run_to_evaluate(folder: Path, args, given: dict):
    """The config, model folder and adapter folder of a finished run, as it tested them."""
    allowed = {"device", "eval_batch_size", "data_dir"}
    if args.adapter or set(given) - allowed:
        raise ConfigError(f"with a run folder, zofo eval takes the run's own model, adapter and task; only "
                          f"{', '.join('--' + a.replace('_', '-') for a in sorted(allowed))} may be given")
    if not (folder / "metrics.json").exists():
        raise ConfigError(f"{folder} holds no finished run (no metrics.json): finish it with zofo train --resume, "
                          "or evaluate a finished one")
    config = load_config(folder / "config.yaml", given)
    trained_base = (folder / "model").is_dir()
    if config.trains_base_model and not trained_base:
        raise ConfigError(f"{folder} saved no base weights (save_model: false): rebuild them with "
                          f"zofo replay {folder} --output DIR, then zofo eval --model DIR")
    adapter = folder / "adapter"
    return config, str(folder / "model") if trained_base else None, str(adapter) if adapter.is_dir() else None


def cmd_replay(args: argparse.Namespace) -> int:
    folder = Path(args.run_dir)
    config = load_config(folder / "config.yaml", {"device": args.device} if args.device else None)
    from .methods import METHODS
    from .models import load_model, load_tokenizer
    from .records import read_json
    from .zo import Trajectory, zo_engine

    trajectory = Trajectory(folder / "trajectory.jsonl")
    trajectory.header()  # a missing or unreadable trajectory fails before the model loads
    step = args.step
    if step is None and (folder / "metrics.json").exists():
        step = read_json(folder / "metrics.json").get("best_step")
    model, _ = load_model(config.model, config.dtype, config.device, seed=config.seed)
    model, named = METHODS[config.method].replayed_parameters(model, config)
    engine = zo_engine(model, named, config.zo, config.lr)
    last = engine.replay(trajectory, until=step)
    engine.space.unpack()
    model.save_pretrained(args.output)
    if not hasattr(model, "peft_config"):
        load_tokenizer(config.model).save_pretrained(args.output)
    note = "" if hasattr(model, "peft_config") or config.method == "mezo" else \
        f" (θ only: the run's selected adapter is {folder / 'adapter'})"
    print(f"replayed {trajectory.path} up to step {last} into {args.output}{note}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import run_sweep

    run_sweep(args.config, parallel=args.parallel, dry_run=args.dry_run, overrides=parse_assignments(args.set),
              out_dir=args.out_dir, gpus=args.gpus, only=parse_selection(args.only), reuse=args.reuse,
              tuning_only=args.tuning_only)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    write_report(args.runs, args.output or Path(args.runs[0]) / "report")
    return 0


# transformers' and peft's notices about their own internals (pytest filters the same, in pyproject.toml)
LIBRARY_NOTICES = (".*fan_in_fan_out.*", ".*past_key_values.*", ".*is_gradient_checkpointing.*",
                   "Position ids are not supported for parameter efficient tuning.*")


def quiet_libraries() -> None:
    """Silence what a user cannot act on: transformers' and peft's notices and progress bars."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for message in LIBRARY_NOTICES:
        warnings.filterwarnings("ignore", message=message)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def die_with_parent() -> None:
    """A sweep's child ends when the sweep does, however the sweep ends (Linux; elsewhere a no-op)."""
    parent = os.environ.get("ZOFO_PARENT_PID")
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(parent):  # the parent died before the call above
        sys.exit(1)


def main(argv: list[str] | None = None) -> int:
    if hasattr(signal, "SIGPIPE") and argv is None:  # `zofo ... | head` ends quietly, as other commands do
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    args = build_parser().parse_args(argv)
    die_with_parent()
    quiet_libraries()
    commands = {"train": cmd_train, "eval": cmd_eval, "replay": cmd_replay, "sweep": cmd_sweep, "report": cmd_report}
    try:
        return commands[args.command](args)
    except (ZofoError, FileNotFoundError) as error:
        # Mistakes a person can fix: one message that says what to do, not a traceback.
        rank = f" (rank {os.environ['RANK']})" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
        print(f"zofo {args.command}{rank}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nzofo {args.command}: interrupted. A training run keeps its last checkpoint: the same command with "
              "--resume continues it", file=sys.stderr)
        return 130
    except RunStopped as stopped:
        print(f"zofo {args.command}: {stopped}", file=sys.stderr)
        return 128 + signal.SIGTERM


if __name__ == "__main__":
    sys.exit(main())
