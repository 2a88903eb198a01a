"""docs/spec/settlement-v2.md §14 by hand: a group's event sum tree and a receipt's proof, computed in the test itself
with hashlib and the written encoding, against `settlement.reports.sum_tree` (what publish and audit use)."""

import hashlib

import pytest

from settlement.reports import sum_tree


def _text(value: str) -> bytes:
    return len(value.encode()).to_bytes(4, "big") + value.encode()


def _fee(value: int) -> bytes:
    return value.to_bytes(16, "big", signed=True)


def _leaf(source: str, event_id: str, fee: int) -> tuple[bytes, int]:
    return hashlib.sha256(b"\x00" + _text(source) + _text(event_id) + _fee(fee)).digest(), fee


def _node(left: tuple[bytes, int], right: tuple[bytes, int]) -> tuple[bytes, int]:
    return hashlib.sha256(b"\x01" + left[0] + _fee(left[1]) + right[0] + _fee(right[1])).digest(), left[1] + right[1]


def test_three_events_by_hand_give_the_root_the_sum_and_each_receipt():
    """Leaves in (source, id) byte order ("//a" < "//b"; "Z-9" < "e-1" by bytes); the third, without a partner,
    goes up unchanged; the root sums the fees, and every proof folds back to it."""
    events = [("//b", "x", 5), ("//a", "e-1", 1_000), ("//a", "Z-9", 2)]
    ordered = sorted(events, key=lambda e: (e[0].encode(), e[1].encode()))
    assert ordered == [("//a", "Z-9", 2), ("//a", "e-1", 1_000), ("//b", "x", 5)]
    a, b, c = (_leaf(*e) for e in ordered)
    by_hand = _node(_node(a, b), c)
    leaves = [sum_tree.leaf(*e) for e in ordered]
    top = sum_tree.root(leaves)
    assert (top.hash, top.fee_micros) == by_hand and by_hand[1] == 1_007
    for index, expected_sides in enumerate((["right", "right"], ["left", "right"], ["left"])):
        steps = sum_tree.proof(leaves, index)
        assert [s["side"] for s in steps] == expected_sides
        assert sum_tree.fold(leaves[index], steps) == top
    changed = sum_tree.fold(sum_tree.leaf("//a", "e-1", 1_001), sum_tree.proof(leaves, 1))
    assert changed.hash != top.hash


def test_a_negative_fee_and_a_single_leaf():
    """A taken-back group's fees are negative (two's complement); one leaf is its own root with no proof step."""
    (only,) = [sum_tree.leaf("//a", "r", -7)]
    assert sum_tree.root([only]) == only and sum_tree.proof([only], 0) == []
    assert (only.hash, only.fee_micros) == _leaf("//a", "r", -7)
    with pytest.raises(OverflowError):
        sum_tree.leaf("//a", "big", 2**127)
