"""The --length-groups value a lease's runs use, chosen by a rule fixed before the measurement: from
benchmarks/length_groups.py's JSON lines (one GPU, nothing else running), the value whose slower speed-up over
one group, of the ZO step's forwards and of the first-order step, is the highest on every named task, if that
speed-up is at least --least on each; else 1 (one padded batch, as before). Prints the value, and why on stderr.
Usage: python3 scripts/choose_length_groups.py LENGTH_GROUPS.jsonl --tasks cb,rte [--least 1.15]
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("jsonl", type=Path)
    parser.add_argument("--tasks", required=True, help="comma-separated: the tasks whose runs will use the value")
    parser.add_argument("--least", type=float, default=1.15, help="the speed-up a value must reach on each task")
    args = parser.parse_args(argv)
    if not args.jsonl.is_file():
        sys.exit(f"no such file: {args.jsonl} (benchmarks/length_groups.py --output writes it)")
    rows = [json.loads(line) for line in args.jsonl.read_text().splitlines() if line.strip()]
    try:
        value, why = choose(rows, args.tasks.split(","), args.least)
    except ValueError as error:
        sys.exit(f"choose_length_groups: {error}")
    print(value)
    print(f"choose_length_groups: {why}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
