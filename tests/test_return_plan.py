"""scripts/return_plan.py: what a GPU call brings back of a sweep's runs, within what a call may return."""

import json
import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))

from return_plan import main, plan  # noqa: E402


def run(root, name, steps, checkpoint_bytes, log_bytes=0, finished=False, sweep="sweep"):
    folder = root / sweep / name
    folder.mkdir(parents=True)
    records = "".join(json.dumps({"step": s, "train_loss": 0.5}) + "\n" for s in range(1, steps + 1))
    (folder / "log.jsonl").write_text(records + " " * log_bytes)
    (folder / "output.log").write_text("what it printed\n")
    (folder / "adapter").mkdir()
    (folder / "adapter" / "weights").write_bytes(b"w" * 10**6)  # never returned: does not count
    (folder / ".checkpoint.pt.tmp").write_bytes(b"t" * 10**6)  # a checkpoint being written: neither
    if checkpoint_bytes:
        (folder / "checkpoint.pt").write_bytes(b"c" * checkpoint_bytes)
    if finished:
        (folder / "metrics.json").write_text("{}")
    return f"{sweep}/{name}"


def test_the_unfinished_runs_that_save_most_steps_per_byte_come_back_within_the_budget(tmp_path, capsys):
    returned = [run(tmp_path, "mezo", 4000, 1_500_000),  # 2.7 steps a kB
                run(tmp_path, "bilevel-far", 4000, 17_000_000),  # 0.24
                run(tmp_path, "bilevel-near", 2000, 17_000_000),  # 0.12
                run(tmp_path, "no-checkpoint", 300, 0),  # nothing to resume from: of no use
                run(tmp_path, "finished", 5000, 0, log_bytes=3_000_000, finished=True)]  # always, and first
    kept, left = plan(tmp_path, returned, budget=23_000_000)
    assert [r.name for r in kept] == ["mezo", "bilevel-far"]
    assert [r.name for r in left] == ["no-checkpoint", "bilevel-near"]

    (tmp_path / "list").write_text("\n".join(returned + ["sweep/tuning.md"]) + "\n")
    assert main([str(tmp_path), str(tmp_path / "list"), "--budget-mb", "23"]) == 0
    printed = capsys.readouterr()
    # for tar -X: a run that stays behind whole; of one without a checkpoint, all but what it printed
    assert printed.out.splitlines() == ["sweep/no-checkpoint/.checkpoint.pt.tmp", "sweep/no-checkpoint/adapter",
                                        "sweep/no-checkpoint/log.jsonl", "sweep/bilevel-near"]
    assert "2 unfinished run(s) come back" in printed.err and "2000 steps to run again" in printed.err
    # the finished runs' bytes count first: without them bilevel-near would fit in 37 MB
    assert [r.name for r in plan(tmp_path, returned, budget=37_000_000)[1]] == ["no-checkpoint", "bilevel-near"]
    assert [r.name for r in plan(tmp_path, returned[:4], budget=37_000_000)[1]] == ["no-checkpoint"]


def test_one_plan_for_several_sweeps_ranks_their_runs_together(tmp_path):
    # gpu_next_lease.sh plans all its sweeps' runs at once: a sweep packed later no longer gets only what the
    # earlier ones left (session 20: Table 9's small prompt-tuning checkpoints stayed behind the λ ablation's)
    returned = [run(tmp_path, f"lambda-{i}", 1200, 15_000_000, sweep="paper-ablation-lambda") for i in range(4)]
    returned += [run(tmp_path, f"prompt-{i}", 1000, 220_000, sweep="paper-table9") for i in range(4)]
    kept, left = plan(tmp_path, returned, budget=47_000_000)
    assert sorted(r.name for r in kept) == ["lambda-0", "lambda-1", "lambda-2"] + [f"prompt-{i}" for i in range(4)]
    assert [r.name for r in left] == ["lambda-3"]


def test_what_the_call_already_returns_comes_off_the_budget(tmp_path, capsys):
    returned = [run(tmp_path, "bilevel", 2000, 17_000_000)]
    (tmp_path / "list").write_text(returned[0] + "\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "other-sweep.tgz").write_bytes(b"a" * 15_000_000)  # packed before: 15 MB left of 30
    assert main([str(tmp_path), str(tmp_path / "list"), "--budget-mb", "30", "--less-what-is-in", str(out)]) == 0
    assert capsys.readouterr().out.splitlines() == ["sweep/bilevel"]
    assert main([str(tmp_path), str(tmp_path / "list"), "--budget-mb", "30"]) == 0
    assert capsys.readouterr().out == ""
