"""scripts/choose_length_groups.py: the --length-groups value a lease uses, by a rule fixed before measuring."""

import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))

from choose_length_groups import choose  # noqa: E402


def row(task, value, forward_ms, first_order_ms):
    return {"task": task, "length_groups": value, "forward_ms": forward_ms, "first_order_ms": first_order_ms}


def test_the_value_fastest_on_every_task_in_both_kinds_of_step_if_fast_enough():
    rows = [row("cb", 1, 100, 200), row("cb", 2, 70, 150), row("cb", 4, 60, 190),
            row("rte", 1, 100, 200), row("rte", 2, 80, 160), row("rte", 4, 50, 100)]
    # 2: min over tasks of the slower kind = min(1.33, 1.25) = 1.25; 4: min(1.05, 2.0) = 1.05
    assert choose(rows, ["cb", "rte"], least=1.15)[0] == 2
    assert choose(rows, ["cb", "rte"], least=1.3)[0] == 1  # none fast enough: one padded batch
    assert choose(rows, ["rte"], least=1.15)[0] == 4
    with pytest.raises(ValueError, match="no one-group reference measured for copa"):
        choose(rows, ["cb", "copa"], least=1.15)


def side_by_side_rows(work: dict[int, float], speedups: dict[int, dict[str, float]],
                      kind_work: dict[int, dict[str, float]] | None = None, processes: int = 16) -> list[dict]:
    rows = [{"side_by_side": processes, "length_groups": v, "work_speedup": w} for v, w in work.items()]
    for v, cells in speedups.items():
        rows += [{"side_by_side": processes, "task": cell.split()[0], "kind": cell.split()[1], "length_groups": v,
                  "speedup": s} for cell, s in cells.items()]
    for v, kinds in (kind_work or {v: {"forward": w, "first_order": w} for v, w in work.items()}).items():
        rows += [{"side_by_side": processes, "length_groups": v, "kind": k, "work_speedup": w} for k, w in kinds.items()]
    return rows


def test_side_by_side_the_value_that_does_the_most_work_if_no_step_slows_much():
    from choose_length_groups import choose_side_by_side

    cells = {"cb forward": 1.4, "sst2 forward": 0.97}
    rows = side_by_side_rows({1: 1.0, 2: 1.25, 3: 1.3},
                             {1: {c: 1.0 for c in cells}, 2: cells, 3: {"cb forward": 1.5, "sst2 forward": 0.8}})
    # 3 does more work, but slows SST-2's steps to 0.8 x: 2 it is
    assert choose_side_by_side(rows, least=1.1, floor=0.9)[0] == 2
    assert choose_side_by_side(rows, least=1.1, floor=0.75)[0] == 3
    assert choose_side_by_side(rows, least=1.25, floor=0.9)[0] == 2  # at --least exactly: enough
    assert choose_side_by_side(rows, least=1.3, floor=0.9)[0] == 1  # none does enough more: one padded batch
    with pytest.raises(ValueError, match="no side-by-side work measured for one group"):
        choose_side_by_side([r for r in rows if r["length_groups"] != 1], least=1.1, floor=0.9)


def test_side_by_side_no_kind_of_step_may_lose_work_and_one_measurement_a_file():
    """A gain made of first-order steps alone, while the ZO forwards lose, would slow a sweep of MeZO runs."""
    from choose_length_groups import choose_side_by_side

    cells = {1: {"cb forward": 1.0, "cb first_order": 1.0}, 2: {"cb forward": 0.92, "cb first_order": 1.35}}
    rows = side_by_side_rows({1: 1.0, 2: 1.13}, cells, {1: {"forward": 1.0, "first_order": 1.0},
                                                        2: {"forward": 0.92, "first_order": 1.35}})
    value, why = choose_side_by_side(rows, least=1.1, floor=0.9)
    assert value == 1 and "(0.92, 'forward')" in why
    both = rows + side_by_side_rows({1: 1.0, 2: 1.5}, {1: cells[1], 2: cells[1]}, processes=8)
    with pytest.raises(ValueError, match="in one file: give one measurement"):
        choose_side_by_side(both, least=1.1, floor=0.9)
