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
"""

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

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
