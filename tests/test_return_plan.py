"""scripts/return_plan.py: the checkpoints a GPU call brings back, within what a call may return."""

import json
import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))

from return_plan import main, plan  # noqa: E402


def run(root, name, steps, checkpoint_bytes, log_bytes=0):
    folder = root / "sweep" / name
    folder.mkdir(parents=True)
    records = "".join(json.dumps({"step": s, "train_loss": 0.5}) + "\n" for s in range(1, steps + 1))
    (folder / "log.jsonl").write_text(records + " " * log_bytes)
    (folder / "output.log").write_text("")
    (folder / "adapter").mkdir()
    (folder / "adapter" / "weights").write_bytes(b"w" * 10**6)  # never returned: does not count
    if checkpoint_bytes:
        (folder / "checkpoint.pt").write_bytes(b"c" * checkpoint_bytes)
    return f"sweep/{name}"


def test_the_checkpoints_that_save_most_steps_per_byte_come_back_within_the_budget(tmp_path, capsys):
    returned = [run(tmp_path, "mezo", 4000, 1_500_000),  # 2.7 steps a kB
                run(tmp_path, "bilevel-far", 4000, 17_000_000),  # 0.24
                run(tmp_path, "bilevel-near", 2000, 17_000_000),  # 0.12
                run(tmp_path, "finished", 5000, 0, log_bytes=3_000_000)]  # no checkpoint, its files count first
    kept, left = plan(tmp_path, returned, budget=23_000_000)
    log_bytes = sum((tmp_path / r / "log.jsonl").stat().st_size for r in returned)
    assert log_bytes + 1_500_000 + 17_000_000 <= 23_000_000 < log_bytes + 1_500_000 + 2 * 17_000_000
    assert [c.parent.name for c in kept] == ["mezo", "bilevel-far"]
    assert [c.parent.name for c in left] == ["bilevel-near"]

    (tmp_path / "list").write_text("\n".join(returned + ["sweep/tuning.md"]) + "\n")
    assert main([str(tmp_path), str(tmp_path / "list"), "--budget-mb", "23"]) == 0
    printed = capsys.readouterr()
    assert printed.out == "sweep/bilevel-near/checkpoint.pt\n"  # for tar -X
    assert "2 checkpoint(s) come back" in printed.err and "2000 steps to run again" in printed.err
