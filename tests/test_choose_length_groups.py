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
