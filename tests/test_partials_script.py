"""scripts/partials.sh: unfinished GPU runs (.gpu/partial, ignored by git) outlive the checkout through the
branch gpu-partials, without touching main's history, index or files."""

import os
import shutil
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "partials.sh"


IDENTITY = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t"}  # commits need one, and CI's machine may have none configured


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=os.environ | IDENTITY).stdout


def partials(repo: Path, action: str) -> str:
    return subprocess.run(["bash", "scripts/partials.sh", action], cwd=repo, check=True, capture_output=True,
                          text=True, env=os.environ | IDENTITY).stdout


def test_saved_partial_runs_come_back_in_a_clone_less_those_finished_since(tmp_path):
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(SCRIPT, repo / "scripts" / "partials.sh")
    (repo / ".gitignore").write_text("/.gpu/\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "start")
    runs = ["sweep/method=fo,seed=0", "sweep/method=fo,seed=1", "sweep/tuning/method=fo,lr=0.1"]
    for run in runs:
        (repo / ".gpu" / "partial" / run).mkdir(parents=True)
        (repo / ".gpu" / "partial" / run / "checkpoint.pt").write_bytes(run.encode())

    assert "3 unfinished run(s) saved in branch gpu-partials" in partials(repo, "save")
    assert partials(repo, "save") == ""  # nothing new: the branch stays as it is
    assert git(repo, "log", "--oneline", "main").count("\n") == 1  # main's history holds no checkpoint
    assert git(repo, "status", "--porcelain") == ""
    assert git(repo, "rev-list", "--count", "gpu-partials").strip() == "1"  # an orphan commit

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    finished = clone / "results" / "sweep" / "runs" / "method=fo,seed=1"
    finished.mkdir(parents=True)
    (finished / "metrics.json").write_text("{}")
    output = partials(clone, "restore")
    assert "sweep/method=fo,seed=1 has finished since: left out" in output
    assert "2 unfinished run(s) restored" in output
    restored = sorted(str(p.parent.relative_to(clone / ".gpu" / "partial"))
                      for p in (clone / ".gpu" / "partial").rglob("checkpoint.pt"))
    assert restored == [runs[0], runs[2]]
    assert (clone / ".gpu" / "partial" / runs[2] / "checkpoint.pt").read_bytes() == runs[2].encode()

    (clone / ".gpu" / "partial" / runs[0] / "checkpoint.pt").write_bytes(b"newer")
    partials(clone, "restore")  # .gpu/partial exists: what this checkout has is kept
    assert (clone / ".gpu" / "partial" / runs[0] / "checkpoint.pt").read_bytes() == b"newer"


def test_once_every_run_has_finished_the_branch_goes_and_a_clone_restores_nothing(tmp_path):
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(SCRIPT, repo / "scripts" / "partials.sh")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "start")
    run = repo / ".gpu" / "partial" / "sweep" / "seed=0"
    run.mkdir(parents=True)
    (run / "checkpoint.pt").write_bytes(b"x")
    partials(repo, "save")
    shutil.rmtree(run)  # collect_runs.sh removes a run's partial folder once it has finished; its sweep's folder stays
    assert "none left, branch gpu-partials deleted" in partials(repo, "save")
    assert git(repo, "branch", "--list", "gpu-partials") == ""
    assert partials(repo, "save") == ""

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    assert partials(clone, "restore") == "" and not (clone / ".gpu").exists()
