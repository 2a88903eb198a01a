"""Merkle sum trees over an allocation group's events (docs/spec/settlement-v2.md, "Event commitment").

A payer proves that one of its events was counted in a group's fee sum without revealing any other event: a
leaf is (source, event id, fee); a node is a hash and the fee sum under it. The proof of a leaf is the sibling
hash and sum at each level; folding it gives the group's root and the group's fee sum. The bundle publishes only
each group's root (`groups.parquet`, `events_root`) and the manifest the root over the groups.

Encoding (every integer a signed 128-bit big-endian two's complement, every string UTF-8 with a 4-byte big-endian
length before it):
- leaf hash  = sha256(0x00 || source || event_id || fee)
- node hash  = sha256(0x01 || left hash || left sum || right hash || right sum), its sum left sum + right sum
- the leaves of a group in (source, event_id) byte order; at each level the nodes pair up two by two, and a
  last node without a partner goes up unchanged. The root of one leaf is that leaf.

`leaf`, `node`, `root`, `proof` and `fold` are the reference. `group_roots` and `root_of` build many groups' roots,
and the root over them, in `settlement.reports._sum_tree_native` (a C extension built by `setup.py`, SHA-256 from
OpenSSL): one SHA-256 per leaf and per node either way, but no Python object for each. Where the extension is not
built they fall back to the reference (same roots, some twenty times slower); CI requires it
(`tests/test_native_built.py`), and a property (tests/settlement/test_sum_tree_native.py) compares the two.
"""

import array
import hashlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from schemas.errors import require

try:
    from settlement.reports import _sum_tree_native
except ImportError:  # no C compiler (or no OpenSSL headers) at install time: the Python trees below, same roots
    _sum_tree_native = None

_fee_bytes = 16


@dataclass(frozen=True)
class SumNode:
    hash: bytes
    fee_micros: int


def _text(value: str) -> bytes:
    encoded = value.encode()
    return len(encoded).to_bytes(4, "big") + encoded


def _fee(value: int) -> bytes:
    return int(value).to_bytes(_fee_bytes, "big", signed=True)


def leaf(source: str, event_id: str, fee_micros: int) -> SumNode:
    return SumNode(hashlib.sha256(b"\x00" + _text(source) + _text(event_id) + _fee(fee_micros)).digest(), fee_micros)


def node(left: SumNode, right: SumNode) -> SumNode:
    body = b"\x01" + left.hash + _fee(left.fee_micros) + right.hash + _fee(right.fee_micros)
    return SumNode(hashlib.sha256(body).digest(), left.fee_micros + right.fee_micros)


def _levels(leaves: Sequence[SumNode]) -> list[list[SumNode]]:
    levels = [list(leaves)]
    while len(levels[-1]) > 1:
        below = levels[-1]
        above = [node(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
        if len(below) % 2:
            above.append(below[-1])
        levels.append(above)
    return levels


def root(leaves: Sequence[SumNode]) -> SumNode:
    """The root of `leaves` (in their order; at least one)."""
    return _levels(leaves)[-1][0]


def proof(leaves: Sequence[SumNode], index: int) -> list[dict]:
    """The siblings from leaf `index` up: `side` (where the sibling sits), `hash` (0x hex), `fee_micros`."""
    steps = []
    for level in _levels(leaves)[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            other = level[sibling]
            steps.append({"side": "left" if sibling < index else "right", "hash": "0x" + other.hash.hex(),
                          "fee_micros": other.fee_micros})
        index //= 2
    return steps


def fold(start: SumNode, steps: Sequence[dict]) -> SumNode:
    """The root a proof leads to from `start`."""
    current = start
    for step in steps:
        other = SumNode(bytes.fromhex(str(step["hash"]).removeprefix("0x")), int(step["fee_micros"]))
        current = node(other, current) if step["side"] == "left" else node(current, other)
    return current


def _group_roots_python(
    sources: list[str], event_ids: list[str], fees_micros: list[int], starts: list[int]
) -> list[bytes]:
    return [
        root([leaf(sources[i], event_ids[i], int(fees_micros[i])) for i in range(lo, hi)]).hash
        for lo, hi in itertools.pairwise(starts)
    ]


def _contiguous(values: pl.Series, kind: pa.DataType) -> pa.Array:
    require(values.null_count() == 0, f"the sum tree's {values.name} has no nulls")
    converted = values.to_arrow(compat_level=pl.CompatLevel.oldest())
    if isinstance(converted, pa.ChunkedArray):
        converted = converted.combine_chunks()
    return converted.cast(kind)


def _word_slice(buffer: pa.Buffer, first: int, count: int) -> memoryview:
    """Entries [first, first + count) of a buffer of int64 (no copy)."""
    return memoryview(buffer)[first * 8 : (first + count) * 8]


def _large_string_buffers(values: pl.Series) -> tuple[memoryview, memoryview]:
    """`values`' Arrow large-string offsets (int64, from this array's first row) and its data buffer."""
    strings = _contiguous(values, pa.large_string())
    _, offsets, data = strings.buffers()
    return _word_slice(offsets, strings.offset, len(strings) + 1), memoryview(data if data is not None else b"")


def _group_roots_native(
    sources: pl.Series, event_ids: pl.Series, fees_micros: pl.Series, starts: list[int]
) -> list[bytes]:
    source_offsets, source_data = _large_string_buffers(sources)
    id_offsets, id_data = _large_string_buffers(event_ids)
    fees = _contiguous(fees_micros.cast(pl.Int64, strict=True), pa.int64())
    hashes = _sum_tree_native.group_roots(  # type: ignore[union-attr]
        array.array("q", starts), source_offsets, source_data, id_offsets, id_data,
        _word_slice(fees.buffers()[1], fees.offset, len(fees)),
    )
    return [hashes[i : i + 32] for i in range(0, len(hashes), 32)]


def group_roots(sources: pl.Series, event_ids: pl.Series, fees_micros: pl.Series, starts: Sequence[int]) -> list[bytes]:
    """The root hash of each group of consecutive leaves (source, event id, fee) already in the tree's order: group
    g is rows `starts[g]` to `starts[g + 1]` (excluded); `starts` runs from 0 to the number of rows, increasing."""
    bounds = [int(s) for s in starts]
    require(bounds[:1] == [0] and bounds[-1] == len(sources), "the groups cover the rows from the first to the last")
    if len(bounds) == 1:
        return []
    if _sum_tree_native is not None:
        return _group_roots_native(sources, event_ids, fees_micros, bounds)
    return _group_roots_python(sources.to_list(), event_ids.to_list(), fees_micros.to_list(), bounds)


def root_of(hashes: Sequence[bytes], fees_micros: Sequence[int]) -> SumNode:
    """The root over nodes given as their hashes and fee sums (in this order; at least one): `root` of the
    `SumNode`s, built natively where the extension is built."""
    require(len(hashes) == len(fees_micros) and len(hashes) > 0, "one fee per hash, at least one node")
    try:
        fees = array.array("q", fees_micros)  # the native build takes 64-bit sums (a group's always fit in practice)
    except OverflowError:
        fees = None
    if _sum_tree_native is None or fees is None:
        return root([SumNode(h, int(f)) for h, f in zip(hashes, fees_micros, strict=True)])
    top_hash, top_fee = _sum_tree_native.root(b"".join(hashes), fees)
    return SumNode(top_hash, int.from_bytes(top_fee, "big", signed=True))
