"""benchmarks/length_groups.py, which times a minibatch's model calls in length groups against one batch, run on
the CPU with a tiny model."""

from conftest import run_benchmark

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
