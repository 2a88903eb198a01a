"""What `royalty claim` needs besides the proof: the root claims are checked against now, the proof of an
account in that root (from the ledger), and the claimer's own key.

While the latest root waits out its timelock the contract checks claims against the previous (active) root,
so a proof for the latest root reverts with `RootNotActive`; `royalty claim` proves against the active one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import duckdb
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract

from ledger import recorder
from ledger.ledger import Ledger
from settlement.onchain.chain import claimer_key_env, load_signer
from settlement.onchain.exceptions import ChainConfigError, NoSettlementError
from settlement.onchain.proofs import stored_proofs


def claimer_signer(embedded: bool, environ: Mapping[str, str] | None = None) -> LocalAccount | None:
    """The key in ROYALTY_CLAIMER_KEY; never the settler's. Required on a real chain (None: embedded's own)."""
    signer = load_signer(None, claimer_key_env, environ)
    if signer is None and not embedded:
        raise ChainConfigError(
            f"set {claimer_key_env} (hex private key of the account paying the claim's gas); a claim is never "
            "signed with the settler's key",
            claimer_key_env,
        )
    return signer


def proof_in_root(ledger: Ledger, account: str, root: str) -> dict[str, Any] | None:
    """`account`'s leaf and proof in the stored tree whose root is `root`; None if no tree or no leaf."""
    checksummed = Web3.to_checksum_address(account)
    return ledger.recorder.read(
        lambda connection: _proof_in_root(connection, checksummed, root), "read the account's proof in the root"
    )


def _proof_in_root(connection: duckdb.DuckDBPyConnection, checksummed: str, root: str) -> dict[str, Any] | None:
    try:
        row = connection.execute(
            f"SELECT epoch FROM {recorder.table('settlement_root')} WHERE lower(root) = lower(?)", [root]
        ).fetchone()
        if row is None:
            return None
        leaf = connection.execute(
            f"SELECT cumulative_units, tree_index, proof FROM {recorder.table('settlement_proof')} "
            "WHERE epoch = ? AND account = ?",
            [row[0], checksummed],
        ).fetchone()
    except duckdb.CatalogException:
        return None
    if leaf is None:
        return None
    (proof,) = stored_proofs(connection, int(row[0]), root, [(checksummed, *leaf)])
    return {
        "account": checksummed,
        "cumulative_amount": str(leaf[0]),
        "root": root,
        "proof": proof,
        "epoch": int(row[0]),
    }


def _hex(value: bytes) -> str:
    return "0x" + bytes(value).hex()


def proof_for_active_root(
    distributor: Contract, found: dict[str, Any], lookup: Callable[[str], dict[str, Any] | None] | None
) -> dict[str, Any]:
    """`found` if it proves against the distributor's active root, else the account's leaf in the active root
    from `lookup` (the ledger's stored trees). Raises `NoSettlementError` naming both roots otherwise."""
    epoch, root, _, _, _ = distributor.functions.activeRoot().call()
    active = _hex(root)
    if str(found.get("root", "")).lower() == active:
        return found
    pending_epoch, pending_root, _, _, pending_at = distributor.functions.pendingRoot().call()
    waiting = f"; root {_hex(pending_root)} (epoch {pending_epoch}) is claimable from unix time {pending_at}"
    waiting = waiting if pending_epoch else ""
    if epoch == 0:
        raise NoSettlementError(f"no root is claimable yet on {distributor.address}{waiting}: claim after that")
    other = lookup(active) if lookup is not None else None
    if other is not None:
        return {**found, **other}
    how = (
        "the ledger has no leaf for this account in it"
        if lookup is not None
        else "claim with --account and --lake to use the active root's proof"
    )
    raise NoSettlementError(
        f"the proof is for root {found.get('root')} (epoch {found.get('epoch')}), but {distributor.address} checks "
        f"claims against its active root {active} (epoch {epoch}){waiting}; {how}"
    )
