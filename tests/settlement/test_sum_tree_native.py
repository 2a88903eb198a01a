"""The native sum trees (`settlement.reports._sum_tree_native`) give the Python reference's roots, byte for byte, on
random groups: any UTF-8 source and id, negative fees (taken-back groups), groups of one leaf and odd sizes, and
Arrow arrays that start inside their buffers (a sliced or chunked polars column)."""

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from settlement.reports import sum_tree

native_built = pytest.mark.skipif(
    sum_tree._sum_tree_native is None,
    reason="settlement.reports._sum_tree_native is not built here (CI requires it: tests/test_native_built.py)",
)

_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
_fee = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_group = st.lists(st.tuples(_text, _text, _fee), min_size=1, max_size=40)


def _reference_roots(groups: list[list[tuple[str, str, int]]]) -> list[bytes]:
    return [sum_tree.root([sum_tree.leaf(*t) for t in group]).hash for group in groups]


def _columns(groups: list[list[tuple[str, str, int]]], lead: int) -> tuple[pl.Series, pl.Series, pl.Series, list[int]]:
    """The groups' leaves as polars columns after `lead` dummy rows sliced off (so the Arrow arrays start at an
    offset), with each group's first row and the end."""
    rows = [("lead", f"l{i}", i) for i in range(lead)] + [t for group in groups for t in group]
    frame = pl.DataFrame(rows, schema={"source": pl.String, "event_id": pl.String, "fee_micros": pl.Int64},
                         orient="row").slice(lead)
    starts = [0]
    for group in groups:
        starts.append(starts[-1] + len(group))
    return frame["source"], frame["event_id"], frame["fee_micros"], starts


@native_built
@settings(max_examples=150, deadline=None)
@given(groups=st.lists(_group, min_size=1, max_size=6), lead=st.integers(min_value=0, max_value=3))
def test_native_group_roots_are_the_reference_roots(groups, lead):
    sources, ids, fees, starts = _columns(groups, lead)
    assert sum_tree._group_roots_native(sources, ids, fees, starts) == _reference_roots(groups)
    assert sum_tree.group_roots(sources, ids, fees, starts) == _reference_roots(groups)


@native_built
def test_native_group_roots_of_a_chunked_column():
    """Two appended frames give a column of two Arrow chunks; the roots are those of the rows in order."""
    groups = [[("//a", "1", 5), ("//a", "2", -3)], [("//b", "é", 7)],
              [("//c", "x", 1), ("//c", "y", 2), ("//c", "z", 3)]]
    first, second = (pl.DataFrame(part, schema=["source", "event_id", "fee_micros"], orient="row")
                     for part in (groups[0], groups[1] + groups[2]))
    both = pl.concat([first, second], rechunk=False)
    assert both["source"].n_chunks() == 2
    roots = sum_tree.group_roots(both["source"], both["event_id"], both["fee_micros"], [0, 2, 3, 6])
    assert roots == _reference_roots(groups)


@native_built
@settings(max_examples=100, deadline=None)
@given(nodes=st.lists(st.tuples(st.binary(min_size=32, max_size=32), _fee), min_size=1, max_size=70),
       big=st.integers(min_value=2**63, max_value=2**100))
def test_native_root_over_group_roots_is_the_reference_root(nodes, big):
    """The manifest's event commitment: the tree over the groups' roots, each a node with its fee sum (sums past
    64 bits, which the native build does not take, go through the reference: same root)."""
    hashes, fees = [h for h, _ in nodes], [f for _, f in nodes]
    assert sum_tree.root_of(hashes, fees) == sum_tree.root([sum_tree.SumNode(h, f) for h, f in nodes])
    fees[-1] = big
    reference = sum_tree.root([sum_tree.SumNode(h, f) for h, f in zip(hashes, fees, strict=True)])
    assert sum_tree.root_of(hashes, fees) == reference


@native_built
def test_native_sums_beyond_128_bits_are_refused_as_the_reference_refuses_them():
    """A sum that the encoding cannot write (here 2**127, encoded in the second level) is an OverflowError in both."""
    nodes = [(b"\x00" * 32, 2**126), (b"\x01" * 32, 2**126), (b"\x02" * 32, 1)]
    with pytest.raises(OverflowError):
        sum_tree.root([sum_tree.SumNode(h, f) for h, f in nodes])
    with pytest.raises(OverflowError):
        sum_tree.root_of([h for h, _ in nodes], [f for _, f in nodes])


def test_the_python_fallback_gives_the_same_roots(monkeypatch):
    """Without the extension (`_sum_tree_native` None) `group_roots` and `root_of` run the reference."""
    monkeypatch.setattr(sum_tree, "_sum_tree_native", None)
    groups = [[("//a", "1", 5), ("//a", "2", -3), ("//a", "3", 9)], [("//b", "q", 4)]]
    sources, ids, fees, starts = _columns(groups, 0)
    roots = sum_tree.group_roots(sources, ids, fees, starts)
    assert roots == _reference_roots(groups)
    top = sum_tree.root_of(roots, [11, 4])
    assert top == sum_tree.root([sum_tree.SumNode(roots[0], 11), sum_tree.SumNode(roots[1], 4)])
    assert sum_tree.group_roots(sources[:0], ids[:0], fees[:0], [0]) == []
