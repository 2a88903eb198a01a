"""The payout tree of an epoch, as pure functions: address leaves, the ledger digest, the Merkle tree.

`settle` builds it from the payables, writes it to the ledger and proposes its root; the HTML report
and `royalty proof` read it back. Nothing here touches the ledger or the chain.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from web3 import Web3

from settlement.engine.constants import amount_micros_max
from settlement.engine.exceptions import AmountOverflowError
from settlement.onchain.merkle import MerkleTree
from settlement.onchain.tree_hashing import checksum_bodies


@dataclass(frozen=True)
class EpochTree:
    """An epoch's payout tree: the Merkle tree of its address leaves, with the ledger figures it commits to."""

    epoch: int
    closing_snapshot: int
    tree: MerkleTree
    ledger_digest: str
    unaddressed_units: int
    tree_snapshot: int | None  # None until written
    manifest: bytes | None = None  # settlement-v2: the manifest.json whose SHA-256 is `ledger_digest`, until written
    net_of: tuple[str, int] | None = None  # (predecessor, its last epoch) whose leaves these are net of

    @property
    def root(self) -> bytes:
        return self.tree.root

    @property
    def root_hex(self) -> str:
        return self.tree.root_hex

    @property
    def total_amount_units(self) -> int:
        return self.tree.total_amount_units


def address_leaves(payables: pl.DataFrame, checksummed: bool = True) -> tuple[dict[str, int], int]:
    """Cumulative units per payout address from `settlement_payable` rows, and the unaddressed units.

    Each epoch's growth (`amount_micros`) is paid to the address the recipient had at that epoch's
    close, so an address change never moves what an old address could already claim; growth accrued
    while a recipient had no address goes to the first address it registers later. Contributor ids
    sharing an address are summed. Addresses are compared case-insensitively and returned checksummed (lowercase
    with `checksummed=False`: the tree's native build checksums them itself, a million in Python cost seconds).
    """
    sums, unaddressed_units = address_sums(payables)
    addresses = sums["address"].to_list()
    units = sums["units"].to_list()
    return dict(zip(_checksummed(addresses) if checksummed else addresses, units, strict=True)), unaddressed_units


def address_sums(payables: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """`address_leaves` as a frame: (address, lowercase; units, Int128) sorted by address, and the unaddressed units.

    Summed over runs of equal addresses once sorted: a hash group-by of a million holders' leaves and the sort of
    its output in random order cost about 2 s CPU. Only the rows of a recipient that lacked an address in some epoch
    have it carried back (a window over those rows alone: over every row it cost 0.1 s at a million holders)."""
    address = pl.col("payout_address").cast(pl.String).str.to_lowercase()
    lacking = payables.filter(pl.col("payout_address").is_null())["recipient"].unique()
    if lacking.is_empty():  # every growth has its own epoch's address
        rows = payables.select(address=address, amount_micros="amount_micros")
    else:
        carried = pl.col("recipient").is_in(lacking.implode())
        carried_back = (
            payables.filter(carried)
            .sort(["recipient", "epoch"])
            .select(address=address.fill_null(strategy="backward").over("recipient"), amount_micros="amount_micros")
        )
        addressed = payables.filter(~carried).select(address=address, amount_micros="amount_micros")
        rows = pl.concat([addressed, carried_back])
    rows = rows.filter(pl.col("amount_micros") > 0)
    unaddressed_units = int(rows.filter(pl.col("address").is_null())["amount_micros"].sum() or 0)
    ordered = (
        rows.filter(pl.col("address").is_not_null())
        .select("address", units=pl.col("amount_micros").cast(pl.Int128))
        .sort("address", maintain_order=True, multithreaded=False)  # as `holder_weight_units`' sort: half the CPU
    )
    starts = pl.col("address").ne_missing(pl.col("address").shift(1)) | (pl.int_range(pl.len()) == 0)
    if ordered.select(starts.all()).item():  # one row per address: nothing to sum
        return ordered, unaddressed_units
    sums = (
        ordered.with_columns(pl.col("address").set_sorted())
        .group_by("address", maintain_order=True)
        .agg(pl.col("units").sum())
    )
    return sums, unaddressed_units


_lowercase_address = re.compile(r"0x[0-9a-f]{40}")


def _checksummed(addresses: list[str]) -> list[str]:
    """EIP-55 of lowercase `0x` addresses, hashed in one batch (`tree_hashing.checksum_bodies`: web3's one call per
    address cost ~0.5 ms each on a loaded machine); if any is not 0x and 40 hex digits, web3 checks each and
    raises for the first such one, as before."""
    if not all(_lowercase_address.fullmatch(a) for a in addresses):
        return [Web3.to_checksum_address(a) for a in addresses]
    bodies = checksum_bodies("".join(a[2:] for a in addresses).encode("ascii")).decode("ascii")
    return ["0x" + bodies[i : i + 40] for i in range(0, len(bodies), 40)]


def ledger_digest(epoch: int, closing_snapshot: int, leaves: dict[str, int]) -> str:
    """sha256 of the epoch, its closing snapshot and every leaf: the digest of settlement-v1 (epochs whose tree
    was written before ledger format 9); settlement-v2 proposes the SHA-256 of the epoch's manifest instead."""
    # One update of every line joined: the same bytes hashed, without a call per leaf.
    lines = (f"{account.lower()},{leaves[account]}\n" for account in sorted(leaves, key=str.lower))
    return _v1_digest(epoch, closing_snapshot, "".join(lines))


def _sums_digest(epoch: int, closing_snapshot: int, sums: pl.DataFrame) -> str:
    """`ledger_digest` of `address_sums`' frame (lowercase addresses, sorted: the lines `ledger_digest` joins, in
    its order), written by column: a string per leaf cost about a second at a million leaves."""
    lines = sums.select(pl.format("{},{}\n", "address", pl.col("units").cast(pl.String))).to_series()
    return _v1_digest(epoch, closing_snapshot, lines.str.join("").item() if len(lines) else "")


def _v1_digest(epoch: int, closing_snapshot: int, lines: str) -> str:
    digest = hashlib.sha256(f"royalty-engine/settlement/v1\n{epoch}\n{closing_snapshot}\n".encode())
    digest.update(lines.encode())
    return "0x" + digest.hexdigest()


def build_epoch_tree(
    epoch: int,
    closing_snapshot: int,
    payables: pl.DataFrame,
    manifest: bytes | Callable[[], bytes] | None = None,
    owed_elsewhere_units: dict[str, int] | None = None,
    net_of: tuple[str, int] | None = None,
) -> EpochTree | None:
    """The payout tree of `epoch` over `payables` (all rows up to it); None when no address is owed anything.

    With `manifest` (settlement-v2) its SHA-256 is the ledger digest; without, the leaf digest of settlement-v1. A
    callable `manifest` is composed only once there is a tree (an epoch owing no address needs none).
    `owed_elsewhere_units`: what a predecessor distributor's last root already owes each address (a distributor
    deployed with `--migrate-from`); the leaves are then net of it (`net_leaves`), and `net_of` names that
    predecessor and epoch (recorded with the tree)."""
    sums, unaddressed_units = address_sums(payables)
    if owed_elsewhere_units is not None:  # net of a predecessor's leaves: the addresses are matched checksummed
        addresses, units = sums["address"].to_list(), sums["units"].to_list()
        leaves = net_leaves(dict(zip(_checksummed(addresses), units, strict=True)), owed_elsewhere_units)
        if not leaves:
            return None
        tree = MerkleTree.from_amounts(leaves)
        _require_total_fits(epoch, tree.total_amount_units)
    else:  # the addresses as columns, lowercase: the tree checksums them
        if sums.is_empty():
            return None
        _require_total_fits(epoch, int(sums["units"].sum()))  # each leaf is positive: each fits in an int64 then
        accounts, amounts_units = sums["address"].to_arrow(), sums["units"].cast(pl.Int64).to_arrow()
        if manifest is None:  # settlement-v1's digest on a thread beside the tree build (both mostly without the GIL)
            with ThreadPoolExecutor(1) as pool:
                sums_digest = pool.submit(_sums_digest, epoch, closing_snapshot, sums)
                tree = MerkleTree.build_columns(accounts, amounts_units)
        else:
            tree = MerkleTree.build_columns(accounts, amounts_units)
    if callable(manifest):
        manifest = manifest()
    if manifest is not None:
        digest = manifest_digest(manifest)
    elif owed_elsewhere_units is not None:
        digest = ledger_digest(epoch, closing_snapshot, leaves)
    else:
        digest = sums_digest.result()
    return EpochTree(epoch, closing_snapshot, tree, digest, unaddressed_units, None, manifest, net_of)


def _require_total_fits(epoch: int, total_units: int) -> None:
    if total_units > amount_micros_max:
        raise AmountOverflowError(epoch, "settlement_root.total_units", total_units)


def net_leaves(cumulative_units: dict[str, int], owed_elsewhere_units: dict[str, int]) -> dict[str, int]:
    """Each address's cumulative units minus what a predecessor's last root owes it (claimable there, forever);
    addresses owed nothing more are left out. An address whose cumulative fell below what the predecessor owes
    gets no leaf: it keeps what the old root promised and no more."""
    net = {address: units - owed_elsewhere_units.get(address, 0) for address, units in cumulative_units.items()}
    return {address: units for address, units in net.items() if units > 0}


def manifest_digest(manifest: bytes) -> str:
    """settlement-v2's ledger digest: the SHA-256 of the epoch's manifest.json bytes."""
    return "0x" + hashlib.sha256(manifest).hexdigest()


def published_dump(tree: EpochTree) -> dict:
    """The published tree: OpenZeppelin's `StandardMerkleTree` dump plus `epoch` and `ledgerDigest`.

    What `write_dump` writes and the claim page (`settlement.reports.claims_page`) embeds.
    """
    return {**tree.tree.dump(), "epoch": tree.epoch, "ledgerDigest": tree.ledger_digest}


def published_dump_json(tree: EpochTree) -> str:
    """`json.dumps(published_dump(tree), indent=1)`, byte for byte, without a dict per leaf or the pure-Python
    encoder `indent` selects (at a million leaves that took most of settle's time). The node and value lists are
    written here; the rest, and the layout around them, by `json.dumps` itself."""
    t = tree.tree
    nodes = t.node_bytes.hex()
    node_lines = ",\n".join([f'  "0x{nodes[i : i + 64]}"' for i in range(0, len(nodes), 64)])
    value_lines = ",\n".join(
        [
            f'  {{\n   "value": [\n    "{account}",\n    "{amount}"\n   ],\n   "treeIndex": {index}\n  }}'
            for (account, amount), index in zip(t.items(), t.tree_indexes, strict=True)
        ]
    )
    frame = json.dumps(
        {**t.dump_header(), "tree": [_nodes_mark], "values": [_values_mark], "epoch": tree.epoch,
         "ledgerDigest": tree.ledger_digest},
        indent=1,
    )  # fmt: skip
    return frame.replace(f'  "{_nodes_mark}"', node_lines, 1).replace(f'  "{_values_mark}"', value_lines, 1)


# Stand-ins for the two lists in the frame json.dumps writes; nothing else there (the header, an int, a hex digest)
# can hold them.
_nodes_mark, _values_mark = "@nodes@", "@values@"


def write_dump(tree_dir: Path, tree: EpochTree) -> Path:
    """The tree in OpenZeppelin's dump format at `tree_dir/epoch-NNNNNN.json`, replaced atomically."""
    tree_dir.mkdir(parents=True, exist_ok=True)
    path = tree_dir / f"epoch-{tree.epoch:06d}.json"
    body = published_dump_json(tree)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(body, encoding="utf-8")
    os.replace(temporary, path)
    return path
