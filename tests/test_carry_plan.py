"""scripts/carry_plan.py: the paths a GPU lease's setup calls carry, packed within each call's limits."""

import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))

from carry_plan import CALL_PATHS, plan, size  # noqa: E402

BLOCK = 4096


def files(folder, sizes):
    """Files of `sizes` 4 KiB blocks each."""
    paths = []
    for i, n in enumerate(sizes):
        path = folder / f"f{i}"
        path.write_bytes(b"x" * n * BLOCK)
        paths.append(path)
    return paths


def test_sizes_count_whole_blocks_as_the_device_tool_does(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "small").write_bytes(b"x")
    (tmp_path / "run" / "larger").write_bytes(b"x" * (BLOCK + 1))
    assert size(tmp_path / "run" / "small") == BLOCK
    assert size(tmp_path / "run") == 3 * BLOCK


def test_calls_stay_within_their_bytes_and_paths_and_carry_everything_once(tmp_path):
    paths = files(tmp_path, [31, 31, 31, 17, 17, 17, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1])
    calls = plan(paths, room=42 * BLOCK)
    assert sorted(p for call in calls for p in call) == sorted(paths)
    assert all(sum(map(size, call)) <= 42 * BLOCK and len(call) <= CALL_PATHS for call in calls)
    assert len(calls) == 5  # three 31s cannot share, nor 31 with 17; the 17s pair up; the small ones fill in


def test_a_path_larger_than_a_call_is_refused_before_the_lease(tmp_path):
    with pytest.raises(SystemExit, match="does not fit one call"):
        plan(files(tmp_path, [50, 3]), room=42 * BLOCK)


def test_a_call_carries_at_most_eight_paths_however_small(tmp_path):
    calls = plan(files(tmp_path, [1] * 20), room=42 * BLOCK)
    assert [len(call) for call in calls] == [CALL_PATHS, CALL_PATHS, 20 - 2 * CALL_PATHS]
