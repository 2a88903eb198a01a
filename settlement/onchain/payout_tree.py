"""The payout tree of an epoch, as pure functions: address leaves, the ledger digest, the Merkle tree.

`settle` builds it from the payables, writes it to the ledger and proposes its root; the HTML report
and `royalty proof` read it back. Nothing here touches the ledger or the chain.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from web3 import Web3

from settlement.engine.constants import amount_micros_max
from settlement.engine.exceptions import AmountOverflowError
from settlement.onchain.merkle import MerkleTree


@dataclass(frozen=True)
class EpochTree:
    """An epoch's payout tree: the Merkle tree of its address leaves, with the ledger figures it commits to."""

    epoch: int
    closing_snapshot: int
    tree: MerkleTree
    ledger_digest: str
    unaddressed_units: int
    tree_snapshot: int | None  # None until written

    @property
    def root(self) -> bytes:
        return self.tree.root

    @property
    def root_hex(self) -> str:
        return self.tree.root_hex

    @property
    def total_amount_units(self) -> int:
        return self.tree.total_amount_units


def address_leaves(payables: pl.DataFrame) -> tuple[dict[str, int], int]:
    """Cumulative units per payout address from `settlement_payable` rows, and the unaddressed units.

    Each epoch's growth (`amount_micros`) is paid to the address the recipient had at that epoch's
    close, so an address change never moves what an old address could already claim; growth accrued
    while a recipient had no address goes to the first address it registers later. Contributor ids
    sharing an address are summed. Addresses are compared case-insensitively and returned checksummed.
    """
    rows = (
        payables.sort(["recipient", "epoch"])
        .with_columns(
            address=pl.col("payout_address").str.to_lowercase().fill_null(strategy="backward").over("recipient")
        )
        .filter(pl.col("amount_micros") > 0)
    )
    unaddressed_units = int(rows.filter(pl.col("address").is_null())["amount_micros"].sum() or 0)
    sums = (
        rows.filter(pl.col("address").is_not_null())
        .group_by("address")
        .agg(pl.col("amount_micros").cast(pl.Int128).sum().alias("units"))
        .sort("address")
    )
    leaves = {Web3.to_checksum_address(a): int(u) for a, u in sums.iter_rows()}
    return leaves, unaddressed_units


def ledger_digest(epoch: int, closing_snapshot: int, leaves: dict[str, int]) -> str:
    """sha256 of the epoch, its closing snapshot and every leaf: proposed with the root, for audits."""
    digest = hashlib.sha256(f"royalty-engine/settlement/v1\n{epoch}\n{closing_snapshot}\n".encode())
    for account in sorted(leaves, key=str.lower):
        digest.update(f"{account.lower()},{leaves[account]}\n".encode())
    return "0x" + digest.hexdigest()


def build_epoch_tree(epoch: int, closing_snapshot: int, payables: pl.DataFrame) -> EpochTree | None:
    """The payout tree of `epoch` over `payables` (all rows up to it); None when no address is owed anything."""
    leaves, unaddressed_units = address_leaves(payables)
    if not leaves:
        return None
    tree = MerkleTree.from_amounts(leaves)
    if tree.total_amount_units > amount_micros_max:
        raise AmountOverflowError(epoch, "settlement_root.total_units", tree.total_amount_units)
    return EpochTree(
        epoch, closing_snapshot, tree, ledger_digest(epoch, closing_snapshot, leaves), unaddressed_units, None
    )


def published_dump(tree: EpochTree) -> dict:
    """The published tree: OpenZeppelin's `StandardMerkleTree` dump plus `epoch` and `ledgerDigest`.

    What `write_dump` writes and the claim page (`settlement.reports.claims_page`) embeds.
    """
    return {**tree.tree.dump(), "epoch": tree.epoch, "ledgerDigest": tree.ledger_digest}


def write_dump(tree_dir: Path, tree: EpochTree) -> Path:
    """The tree in OpenZeppelin's dump format at `tree_dir/epoch-NNNNNN.json`, replaced atomically."""
    tree_dir.mkdir(parents=True, exist_ok=True)
    path = tree_dir / f"epoch-{tree.epoch:06d}.json"
    body = json.dumps(published_dump(tree), indent=1)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(body, encoding="utf-8")
    os.replace(temporary, path)
    return path
