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
from schemas.errors import require
from settlement.onchain.exceptions import ChainConfigError, NoSettlementError
from settlement.onchain.merkle import leaf_hash, process_proof, proof_indexes
from settlement.onchain.tables import tree_node_chunk_nodes

_node_bytes = 32


def account_proof(ledger: Ledger, account: str, distributor: str | None = None) -> dict[str, Any]:
    """`account`'s cumulative amount and Merkle proof in the latest root recorded (on `distributor` when given),
    else in the latest tree written. Raises `NoSettlementError` when there is none or no leaf for the account."""
    if not Web3.is_address(account):
        raise NoSettlementError("not an address: pass --account 0x + 40 hex digits", account)
    checksummed = Web3.to_checksum_address(account)
    epoch, contract, chain_id, root, leaf, proof = ledger.recorder.read(
        lambda connection: _account_leaf(connection, checksummed, distributor), "read the account's proof"
    )
    return {
        "account": checksummed,
        "cumulative_amount": str(leaf[0]),
        "root": root,
        "proof": proof,
        "epoch": int(epoch),
        "distributor": contract,
        "chain_id": None if chain_id is None else int(chain_id),
    }


def _account_leaf(connection: duckdb.DuckDBPyConnection, checksummed: str, distributor: str | None) -> tuple:
    """(epoch, contract, chain id, root, leaf, proof) of `checksummed` in the latest recorded root, as one read."""
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
            f"SELECT cumulative_units, tree_index, proof FROM {recorder.table('settlement_proof')} "
            "WHERE epoch = ? AND account = ?",
            [epoch, checksummed],
        ).fetchone()
    except duckdb.CatalogException:
        raise NoSettlementError("this ledger has no settlement tables yet: run `royalty settle` first") from None
    if leaf is None:
        raise NoSettlementError(f"the epoch {epoch} tree (root {root}) has no leaf for this account", checksummed)
    (proof,) = stored_proofs(connection, int(epoch), root, [(checksummed, *leaf)])
    return epoch, contract, chain_id, root, leaf, proof


def largest_leaves(ledger: Ledger, epoch: int, count: int) -> list[tuple[str, int, list[str]]]:
    """The `count` largest leaves of `epoch`'s tree: (account, cumulative units, proof), largest first."""
    return ledger.recorder.read(
        lambda connection: _largest_leaves(connection, epoch, count), f"read epoch {epoch}'s largest leaves"
    )


def _largest_leaves(connection: duckdb.DuckDBPyConnection, epoch: int, count: int) -> list[tuple[str, int, list[str]]]:
    rows = connection.execute(
        f"SELECT account, cumulative_units, tree_index, proof FROM {recorder.table('settlement_proof')} "
        "WHERE epoch = ? ORDER BY cumulative_units DESC, account LIMIT ?",
        [epoch, count],
    ).fetchall()
    (root,) = connection.execute(
        f"SELECT root FROM {recorder.table('settlement_root')} WHERE epoch = ?", [epoch]
    ).fetchone()
    proofs = stored_proofs(connection, epoch, root, rows)
    return [(str(row[0]), int(row[1]), proof) for row, proof in zip(rows, proofs, strict=True)]


def stored_proofs(
    connection: duckdb.DuckDBPyConnection, epoch: int, root: str, leaves: list[tuple[str, int, int, list | None]]
) -> list[list[str]]:
    """The hex proof of each `(account, cumulative units, tree index, stored proof)` leaf of `epoch`'s tree: the
    stored one (trees written before ledger format 14), else its siblings read off `settlement_tree_node`, where a
    sibling that is a leaf not held there (trees written since format 23 hold internal nodes only) is hashed from its
    `settlement_proof` row. Each is checked to lead from its leaf to `root`."""
    indexes = {leaf[2]: proof_indexes(leaf[2]) for leaf in leaves if leaf[3] is None}
    chunks = sorted({index // tree_node_chunk_nodes for path in indexes.values() for index in path})
    nodes: dict[int, bytes] = {}
    if chunks:
        rows = connection.execute(
            f"SELECT chunk, nodes FROM {recorder.table('settlement_tree_node')} WHERE epoch = ? AND "
            f"chunk IN ({', '.join(map(str, chunks))})",
            [epoch],
        ).fetchall()
        nodes = {int(chunk): bytes(body) for chunk, body in rows}
    missing = {index for path in indexes.values() for index in path if not _held(nodes, index)}
    leaf_nodes = _leaf_nodes(connection, epoch, missing)
    proofs = []
    for account, units, tree_index, stored in leaves:
        proof = (
            list(stored)
            if stored is not None
            else [leaf_nodes[i] if i in leaf_nodes else _node_hex(nodes, i, epoch) for i in indexes[tree_index]]
        )
        leads_to = process_proof(leaf_hash(account, int(units)), [bytes.fromhex(p[2:]) for p in proof])
        require(
            "0x" + leads_to.hex() == str(root).lower(),
            f"epoch {epoch}: the stored proof of {account} leads to its stored root {root}",
        )
        proofs.append(proof)
    return proofs


def _held(nodes: dict[int, bytes], index: int) -> bool:
    chunk = nodes.get(index // tree_node_chunk_nodes)
    return chunk is not None and len(chunk) >= (index % tree_node_chunk_nodes + 1) * _node_bytes


def _leaf_nodes(connection: duckdb.DuckDBPyConnection, epoch: int, indexes: set[int]) -> dict[int, str]:
    """The hex node of each leaf of `epoch`'s tree at one of `indexes` (tree positions), hashed from its
    `settlement_proof` row; positions that are no leaf's are left out (`_node_hex` then names them)."""
    if not indexes:
        return {}
    rows = connection.execute(
        f"SELECT tree_index, account, cumulative_units FROM {recorder.table('settlement_proof')} WHERE epoch = ? "
        f"AND tree_index IN ({', '.join(map(str, sorted(indexes)))})",
        [epoch],
    ).fetchall()
    return {int(index): "0x" + leaf_hash(account, int(units)).hex() for index, account, units in rows}


def _node_hex(nodes: dict[int, bytes], index: int, epoch: int) -> str:
    require(_held(nodes, index), f"epoch {epoch}: the ledger holds tree node {index}")
    start = (index % tree_node_chunk_nodes) * _node_bytes
    return "0x" + nodes[index // tree_node_chunk_nodes][start : start + _node_bytes].hex()


def recorded_distributor(ledger: Ledger, chain_id: int) -> str:
    """The distributor this ledger's latest settlement on `chain_id` went to (`ChainConfigError` if none)."""
    ledger.ensure_tables()
    rows = ledger.recorder.read(
        lambda connection: connection.execute(
            f"SELECT contract FROM {recorder.table('settlement_record')} WHERE chain_id = ? ORDER BY epoch DESC "
            "LIMIT 1",
            [chain_id],
        ).fetchall(),
        "read the distributor last settled to",
    )
    row = rows[0] if rows else None
    if row is None:
        raise ChainConfigError(
            f"this ledger has settled nothing on chain {chain_id}: pass --distributor", "distributor"
        )
    return str(row[0])
