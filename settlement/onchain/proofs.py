"""Reading the stored payout trees: an account's proof, the largest leaves, the distributor last settled to.

What `royalty proof`, `royalty sync-claims` (without `--distributor`) and the demo read of the on-chain
settlement's tables, through the ledger's recorder API.
"""

from __future__ import annotations

from typing import Any

import duckdb
from web3 import Web3

from ledger import recorder
from ledger.ledger import Ledger
from settlement.onchain.exceptions import ChainConfigError, NoSettlementError


def account_proof(ledger: Ledger, account: str, distributor: str | None = None) -> dict[str, Any]:
    """`account`'s cumulative amount and Merkle proof in the latest root recorded (on `distributor` when given),
    else in the latest tree written. Raises `NoSettlementError` when there is none or no leaf for the account."""
    if not Web3.is_address(account):
        raise NoSettlementError("not an address: pass --account 0x + 40 hex digits", account)
    checksummed = Web3.to_checksum_address(account)
    connection = ledger.connection
    try:
        filters, params = ("WHERE lower(contract) = lower(?)", [distributor]) if distributor else ("", [])
        recorded = connection.execute(
            f"SELECT epoch, contract, chain_id, root FROM {recorder.table('settlement_record')} {filters} "
            "ORDER BY epoch DESC, recorded_at DESC LIMIT 1",
            params,
        ).fetchone()
        if recorded is None:
            recorded = connection.execute(
                f"SELECT epoch, NULL, NULL, root FROM {recorder.table('settlement_root')} ORDER BY epoch DESC LIMIT 1"
            ).fetchone()
        if recorded is None:
            raise NoSettlementError("no settled epoch in this ledger yet: run `royalty settle` first")
        epoch, contract, chain_id, root = recorded
        leaf = connection.execute(
            f"SELECT cumulative_units, proof FROM {recorder.table('settlement_proof')} WHERE epoch = ? AND account = ?",
            [epoch, checksummed],
        ).fetchone()
    except duckdb.CatalogException:
        raise NoSettlementError("this ledger has no settlement tables yet: run `royalty settle` first") from None
    if leaf is None:
        raise NoSettlementError(f"the epoch {epoch} tree (root {root}) has no leaf for this account", checksummed)
    return {
        "account": checksummed,
        "cumulative_amount": str(leaf[0]),
        "root": root,
        "proof": list(leaf[1]),
        "epoch": int(epoch),
        "distributor": contract,
        "chain_id": None if chain_id is None else int(chain_id),
    }


def largest_leaves(ledger: Ledger, epoch: int, count: int) -> list[tuple[str, int, list[str]]]:
    """The `count` largest leaves of `epoch`'s tree: (account, cumulative units, proof), largest first."""
    rows = ledger.connection.execute(
        f"SELECT account, cumulative_units, proof FROM {recorder.table('settlement_proof')} WHERE epoch = ? "
        "ORDER BY cumulative_units DESC, account LIMIT ?",
        [epoch, count],
    ).fetchall()
    return [(str(account), int(units), list(proof)) for account, units, proof in rows]


def recorded_distributor(ledger: Ledger, chain_id: int) -> str:
    """The distributor this ledger's latest settlement on `chain_id` went to (`ChainConfigError` if none)."""
    ledger.ensure_tables()
    row = ledger.connection.execute(
        f"SELECT contract FROM {recorder.table('settlement_record')} WHERE chain_id = ? ORDER BY epoch DESC LIMIT 1",
        [chain_id],
    ).fetchone()
    if row is None:
        raise ChainConfigError(
            f"this ledger has settled nothing on chain {chain_id}: pass --distributor", "distributor"
        )
    return str(row[0])
