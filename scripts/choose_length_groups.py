"""The --length-groups value a lease's runs use, chosen by a rule fixed before the measurement: from
benchmarks/length_groups.py's JSON lines (one GPU, nothing else running), the value whose slower speed-up over
one group, of the ZO step's forwards and of the first-order step, is the highest on every named task, if that
speed-up is at least --least on each; else 1 (one padded batch, as before). Prints the value, and why on stderr.

With --side-by-side, from its --side-by-side lines (processes sharing the GPU, as a sweep's runs do; session 31's
rule): the value whose work done (steps weighted by their cost in one group) is the highest, if it is at least
--least times one group's, no kind of step does less work than in one group (a sweep of mostly one kind of run
loses nothing) and no task's kind of step runs below --floor times its speed in one group; else 1.

Usage: python3 scripts/choose_length_groups.py LENGTH_GROUPS.jsonl --tasks cb,rte [--least 1.15]
       python3 scripts/choose_length_groups.py SIDE_BY_SIDE.jsonl --side-by-side [--least 1.1] [--floor 0.9]
"""

import argparse
import json
import sys
from pathlib import Path


def choose(rows: list[dict], tasks: list[str], least: float) -> tuple[int, str]:
    by_task: dict[str, dict[int, dict]] = {}
    for row in rows:
        by_task.setdefault(row["task"], {})[row["length_groups"]] = row
    missing = [task for task in tasks if 1 not in by_task.get(task, {})]
    if missing:
        raise ValueError(f"no one-group reference measured for {', '.join(missing)}")

    def speedup(task: str, value: int) -> float:  # the slower of the two kinds of step
        one, grouped = by_task[task][1], by_task[task][value]
        return min(one["forward_ms"] / grouped["forward_ms"], one["first_order_ms"] / grouped["first_order_ms"])

    values = sorted(set.intersection(*(set(by_task[task]) for task in tasks)) - {1})
    worst = {value: round(min(speedup(task, value) for task in tasks), 3) for value in values}
    best = max(worst, key=worst.get, default=None)
    if best is None or worst[best] < least:
        return 1, f"no value is {least}x one group's speed on every task of {tasks}: {worst}"
    return best, f"{best} groups: at least {worst[best]}x one group's speed on {tasks} (each value's least: {worst})"


def choose_side_by_side(rows: list[dict], least: float, floor: float) -> tuple[int, str]:
    sizes = {row.get("side_by_side") for row in rows}
    if len(sizes) > 1:
        raise ValueError(f"measurements of {sorted(map(str, sizes))} processes in one file: give one measurement")
    work = {row["length_groups"]: row["work_speedup"] for row in rows if "work_speedup" in row and "kind" not in row}
    if 1 not in work:
        raise ValueError("no side-by-side work measured for one group (benchmarks/length_groups.py --side-by-side)")
    slowest: dict[int, tuple[float, str]] = {}  # each value's slowest task and kind of step, against one group
    kind_work: dict[int, tuple[float, str]] = {}  # each value's least work done by one kind of step alone
    for row in rows:
        value = row["length_groups"]
        if "speedup" in row:
            cell = (row["speedup"], f"{row['task']} {row['kind']}")
            slowest[value] = min(slowest.get(value, cell), cell)
        elif "work_speedup" in row and "kind" in row:
            kind_work[value] = min(kind_work.get(value, (row["work_speedup"], row["kind"])),
                                   (row["work_speedup"], row["kind"]))
    fit = {v: w for v, w in work.items() if v != 1 and w >= least and slowest.get(v, (0.0,))[0] >= floor
           and kind_work.get(v, (0.0,))[0] >= 1.0}
    summary = {v: (work[v], slowest.get(v), kind_work.get(v)) for v in sorted(work) if v != 1}
    if not fit:
        return 1, (f"no value does {least}x one group's work with each kind of step's work at 1x or more and every "
                   f"task's steps at {floor}x or more (work, slowest step, least work of a kind): {summary}")
    best = max(fit, key=fit.get)
    return best, (f"{best} groups: {work[best]}x one group's work, its slowest step {slowest[best]}, its least work "
                  f"of a kind {kind_work[best]} (all: {summary})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("jsonl", type=Path)
    parser.add_argument("--tasks", help="comma-separated: the tasks whose runs will use the value")
    parser.add_argument("--least", type=float, help="the speed-up a value must reach on each task (default 1.15), "
                                                     "or the work done side by side (default 1.1)")
    parser.add_argument("--side-by-side", action="store_true", help="the rule for --side-by-side measurements")
    parser.add_argument("--floor", type=float, default=0.9, help="--side-by-side: the least speed of any step")
    args = parser.parse_args(argv)
    if not args.side_by_side and not args.tasks:
        parser.error("--tasks is needed (the tasks whose runs will use the value), unless --side-by-side")
    if not args.jsonl.is_file():
        sys.exit(f"no such file: {args.jsonl} (benchmarks/length_groups.py --output writes it)")
    rows = [json.loads(line) for line in args.jsonl.read_text().splitlines() if line.strip()]
    try:
        if args.side_by_side:
            value, why = choose_side_by_side(rows, 1.1 if args.least is None else args.least, args.floor)
        else:
            value, why = choose(rows, args.tasks.split(","), 1.15 if args.least is None else args.least)
    except ValueError as error:
        sys.exit(f"choose_length_groups: {error}")
    print(value)
    print(f"choose_length_groups: {why}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
