"""benchmarks/length_groups.py, which times a minibatch's model calls in length groups against one batch, run on
the CPU with a tiny model."""

import subprocess
import sys

from conftest import REPO, run_benchmark

from zofo.records import read_records


def test_length_groups_are_timed_side_by_side_and_pad_less(tmp_path, data_dir):
    output = tmp_path / "groups.jsonl"
    result = run_benchmark("length_groups.py", "--model", "tiny-llama", "--device", "cpu", "--tasks", "rte",
                           "--groups", "1,3", "--batches", "2", "--batch-size", "8", "--repeats", "1",
                           "--output", str(output), data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    rows = read_records(output)
    assert [(r["task"], r["length_groups"]) for r in rows] == [("rte", 1), ("rte", 3)]
    assert rows[0]["padded_per_real_token"] > rows[1]["padded_per_real_token"] >= 1.0
    assert all(r["forward_ms"] > 0 and r["first_order_ms"] > 0 for r in rows)
    assert "rte: 3 group(s):" in result.stdout and "x one group's speed" in result.stdout


def test_side_by_side_processes_are_timed_together_and_their_work_compared(tmp_path, data_dir):
    """--side-by-side: process 0 does ZO steps' forwards, process 1 first-order steps (one task), each value of
    --groups in its rounds; the rule reads what it writes."""
    output = tmp_path / "side.jsonl"
    result = run_benchmark("length_groups.py", "--model", "tiny-llama", "--device", "cpu", "--tasks", "rte",
                           "--groups", "1,3", "--batches", "2", "--batch-size", "8", "--side-by-side", "2",
                           "--seconds", "1.5", "--rounds", "2", "--output", str(output), data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    rows = read_records(output)
    cells = [r for r in rows if "speedup" in r]
    assert [(r["task"], r["kind"], r["length_groups"]) for r in cells] == [
        ("rte", "forward", 1), ("rte", "forward", 3), ("rte", "first_order", 1), ("rte", "first_order", 3)]
    assert all(r["steps_per_second"] > 0 and r["processes"] == 1 for r in cells)
    work = {(r.get("kind"), r["length_groups"]): r["work_speedup"] for r in rows if "work_speedup" in r}
    assert set(work) == {(kind, v) for kind in (None, "forward", "first_order") for v in (1, 3)}
    assert work[None, 1] == work["forward", 1] == work["first_order", 1] == 1.0
    # one process of each kind: each kind's work done against one group is its one cell's speed-up
    speedup = {(r["kind"], r["length_groups"]): r["speedup"] for r in cells}
    assert abs(work["forward", 3] - speedup["forward", 3]) < 1e-3
    assert abs(work["first_order", 3] - speedup["first_order", 3]) < 1e-3
    assert min(work["forward", 3], work["first_order", 3]) - 1e-3 <= work[None, 3] <= \
        max(work["forward", 3], work["first_order", 3]) + 1e-3  # the whole: a weighted mean of the kinds'
    assert "rte, first-order steps (1 process): 1 group(s)" in result.stdout and "work done" in result.stdout
    chosen = subprocess.run([sys.executable, str(REPO / "scripts" / "choose_length_groups.py"), str(output),
                             "--side-by-side"], capture_output=True, text=True)
    assert chosen.returncode == 0 and chosen.stdout.strip() in {"1", "3"}, chosen.stderr
    assert "choose_length_groups:" in chosen.stderr
