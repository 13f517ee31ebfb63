"""Here, before a GPU lease: which ignored paths each setup call carries (the `carry` of the device tool).

A call carries the repository's files (tracked, and untracked ones git does not ignore) plus its `carry`
paths, 64 MiB in all and 8 paths at most. Setup needs .gpu/py, .gpu/tasks.tar.xz and the wheel's parts
.gpu/w1 ... (scripts/gpu_setup.sh); the unfinished runs to resume (results/partial, scripts/collect_runs.sh)
are tracked, so they come with the repository's files in every call. This packs the setup paths into as few
calls as fit beside the repository (largest first), and prints one JSON list per call, to paste as `carry`;
each call runs `source scripts/gpu_setup.sh`, and the sweeps start in the last one.

    python3 scripts/carry_plan.py                      # setup
    python3 scripts/carry_plan.py .gpu/metaicl.tar.xz  # and more paths
"""

import json
import os
import subprocess
import sys
from pathlib import Path

CALL_BYTES = 64 * 2**20
CALL_PATHS = 8
MARGIN = 2**20  # the archive's own overhead


def file_size(path: Path) -> int:
    # in whole 4 KiB blocks: the device tool's limit counts space on disk (a call of 66 MB of bytes, 1,668 of them
    # small files, was refused as over 64 MiB)
    return -(-path.stat().st_size // 4096) * 4096


def size(path: Path) -> int:
    return file_size(path) if path.is_file() else sum(file_size(p) for p in path.rglob("*") if p.is_file())


def repository_bytes() -> int:
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout.split(b"\0")
    return sum(file_size(Path(name.decode())) for name in listed if name and Path(name.decode()).is_file())


def wanted(extra: list[str]) -> list[Path]:
    setup = [Path(".gpu/py"), Path(".gpu/tasks.tar.xz")] + sorted(Path(".gpu").glob("w[0-9]*"))
    missing = [p for p in setup[:2] + [Path(e) for e in extra] if not p.exists()]
    if missing or not setup[2:]:
        sys.exit(f"missing: {', '.join(map(str, missing)) or '.gpu/w1 ... (the wheel in parts, see scripts/gpu_setup.sh)'}")
    return setup + [Path(e) for e in extra]


def plan(paths: list[Path], room: int) -> list[list[Path]]:
    """First fit, largest first: few calls, each within `room` bytes and CALL_PATHS paths."""
    calls: list[tuple[int, list[Path]]] = []
    for path in sorted(paths, key=size, reverse=True):
        if size(path) > room:
            sys.exit(f"{path} ({size(path) / 1e6:.1f} MB) does not fit one call beside the repository "
                     f"({room / 1e6:.1f} MB left of 64 MiB): split it, or make the repository smaller")
        for i, (used, members) in enumerate(calls):
            if used + size(path) <= room and len(members) < CALL_PATHS:
                calls[i] = (used + size(path), members + [path])
                break
        else:
            calls.append((size(path), [path]))
    return [members for _, members in calls]


def main() -> None:
    os.chdir(Path(__file__).resolve().parents[1])  # the paths it reads and prints are the repository's
    repository = repository_bytes()
    room = CALL_BYTES - repository - MARGIN
    calls = plan(wanted(sys.argv[1:]), room)
    # session 21: its first two calls, sent one at a time, each found a cold machine (about 150 s of held time lost)
    print(f"repository {repository / 1e6:.1f} MB; {len(calls)} setup calls in a row (the machine goes back 30 s "
          f"after a call: send them as one batch, with the first gpu_next_lease.sh), each `source scripts/gpu_setup.sh`:")
    for number, members in enumerate(calls, 1):
        print(f"call {number} ({sum(map(size, members)) / 1e6:.1f} MB): {json.dumps([str(p) for p in members])}")


if __name__ == "__main__":
    main()
