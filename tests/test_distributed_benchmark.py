"""benchmarks/distributed.py, the script the multi-GPU measurements come from, run on the CPU (gloo): every
launch it makes (data parallel at N = 1 and 2, sharded, the fp32 curves) ends with a record, and what the records
claim (weights identical, N = 2's curve on N = 1's) holds."""

import os
import subprocess
import sys
from pathlib import Path

from zofo.records import read_records

REPO = Path(__file__).resolve().parents[1]


def test_the_distributed_benchmark_measures_every_launch_and_its_curves_agree(tmp_path):
    output = tmp_path / "distributed.jsonl"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "distributed.py"), "--device", "cpu", "--nprocs", "1,2",
                             "--archs", "tiny", "--workloads", "zo-sgd,bilevel", "--sharded", "tiny:2", "--curve", "tiny:3",
                             "--batch", "2", "--length", "16", "--warmup", "1", "--iters", "1", "--output", str(output)],
                            capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]  # a failed launch says why
    records = read_records(output)
    kinds = [(r["workload"], r["processes"], r["sharded"]) for r in records]
    assert kinds == [("zo-sgd", 1, False), ("bilevel", 1, False), ("zo-sgd", 2, False), ("bilevel", 2, False),
                     ("zo-sgd", 2, True), ("zo-sgd-curve", 1, False), ("bilevel-curve", 1, False),
                     ("zo-sgd-curve", 2, False), ("bilevel-curve", 2, False)]
    for r in records[:5]:
        assert r["examples_per_s"] > 0 and r["seconds"] > 0
    assert [r["scaling_efficiency"] for r in records[:2]] == [1.0, 1.0]
    assert records[4]["zo_parameters_per_rank"] < records[0]["zo_parameters_per_rank"]  # each rank its own slice
    for r in records[5:7]:  # N = 1 against itself
        assert r["max_weight_difference_to_n1"] == 0 and set(r["max_logged_difference_to_n1"].values()) == {0}
    for r in records[7:]:  # N = 2: equal up to the order of float sums (fp32)
        assert len(r["losses"]) == 3
        assert r["max_weight_difference_to_n1"] < 1e-5
        assert r["max_logged_difference_to_n1"]["train_loss"] < 1e-5
