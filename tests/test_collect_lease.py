"""scripts/collect_lease.sh: after a GPU call, the runs it returned are collected (finished ones into results/,
part-way ones, their records gzipped, into results/partial, which git tracks) and the steps the call ran are counted
from the runs' own records."""

import gzip
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import torch

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
IDENTITY = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t"}  # commits need one, and CI's machine may have none configured


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=os.environ | IDENTITY).stdout


def write_run(folder: Path, records: list[dict], finished: bool, output_log: str = "", copied: bool = False):
    folder.mkdir(parents=True)
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "output.log").write_text(output_log)
    if finished:
        (folder / "metrics.json").write_text("{}")
    else:
        (folder / "checkpoint.pt").write_bytes(b"checkpoint")
    if copied:
        (folder / "reused.yaml").write_text("source: elsewhere\n")


def test_a_call_is_collected_and_its_steps_counted_from_the_runs_records(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(SCRIPTS, repo / "scripts")
    (repo / ".gitignore").write_text("/.gpu/\n/results-full/\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "start")
    tuning = "method=fo,peft=lora,task=rte,lr=0.1"
    # a part-way tuning run from an earlier call, stopped at SIGTERM after step 693, kept as collect_runs.sh keeps
    # one: its records gzipped
    earlier = repo / "results/partial/sweep/tuning" / tuning
    write_run(earlier, [{"step": 500, "val_loss": 0.8}], finished=False,
              output_log="zofo train: stopped by SIGTERM after step 693, checkpointed there\n")
    for records in ("log.jsonl", "output.log"):
        (earlier / f"{records}.gz").write_bytes(gzip.compress((earlier / records).read_bytes()))
        (earlier / records).unlink()

    returned = tmp_path / "returned" / "results" / "sweep" / "runs"
    # it finished in this call, at step 990
    write_run(returned / "tuning" / tuning, [{"step": 989, "loss": 1.0}, {"step": 990, "val_loss": 0.7}],
              finished=True)
    # a new run, killed after its evaluation at step 500: its checkpoint is 500's, not its last record's 600
    new = "method=mezo,peft=prefix,steps=10000,task=cb,seed=0"
    write_run(returned / new, [{"step": 500, "val_loss": 0.7}, {"step": 600, "loss": 1.0}], finished=False)
    # a new run killed after a checkpoint between evaluations (--checkpoint-every): its step, 650, is the checkpoint's
    between = "method=mezo,peft=prefix,steps=10000,task=rte,seed=0"
    write_run(returned / between, [{"step": 500, "val_loss": 0.7}, {"step": 650, "loss": 1.0}], finished=False)
    torch.save({"step": 650, "iteration": 650}, returned / between / "checkpoint.pt")
    # copied from another sweep's finished run: no step ran here
    write_run(returned / "tuning" / "method=fo,peft=lora,task=cb,lr=0.1", [{"step": 1000, "val_loss": 0.6}],
              finished=True, copied=True)
    call = tmp_path / "call"
    call.mkdir()
    with tarfile.open(call / "sweep.tgz", "w:gz") as archive:
        archive.add(tmp_path / "returned" / "results", arcname="results")

    # python3 with torch first, as after `source .venv/bin/activate`
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    output = subprocess.run(["bash", "scripts/collect_lease.sh", str(call)], cwd=repo, check=True,
                            capture_output=True, text=True, env=os.environ | IDENTITY | {"PATH": path}).stdout

    assert (repo / "results/sweep/runs/tuning" / tuning / "metrics.json").exists()
    assert not earlier.exists()  # finished: no longer part-way
    kept = repo / "results/partial/sweep" / new
    assert sorted(p.name for p in kept.iterdir()) == ["checkpoint.pt", "log.jsonl.gz", "output.log.gz"]
    assert json.loads(gzip.decompress((kept / "log.jsonl.gz").read_bytes()).splitlines()[0]) == {"step": 500,
                                                                                               "val_loss": 0.7}
    assert "2 unfinished run(s) in results/partial" in output
    git(repo, "add", "results")  # tracked: the part-way run is committed with the finished ones
    assert f"results/partial/sweep/{new}/checkpoint.pt" in git(repo, "diff", "--cached", "--name-only")
    summary = [line for line in output.splitlines() if line.startswith("steps: ") and "results/" not in line]
    assert summary == [
        "steps: sweep part-way method=mezo peft=prefix task=cb: 500 in 1 run(s)",
        "steps: sweep part-way method=mezo peft=prefix task=rte: 650 in 1 run(s)",
        "steps: sweep tuning finished method=fo peft=lora task=rte: 297 in 1 run(s)",
        "steps: 1447 in all",
    ]
