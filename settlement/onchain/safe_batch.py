"""`royalty settle --via safe`: the proposal (and its funding) as a Safe Transaction Builder batch, no hot key.

The batch is the JSON file the Safe{Wallet} Transaction Builder app imports ("drag and drop a JSON file"):
`{version, chainId, createdAt, meta, transactions: [{to, value, data}]}`. The Safe must hold the
distributor's SETTLER_ROLE; when it is also the treasury, the batch first approves the distributor for the
shortfall. Once the signers execute it, a later `royalty settle` finds the epoch's `RootProposed` event with
the ledger's root on the chain and records it (`recovered`), as it does for a killed run's proposal.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from web3 import Web3
from web3.contract import Contract

from settlement.onchain.chain import Chain, token_contract
from settlement.onchain.exceptions import ChainConfigError
from settlement.onchain.payout_tree import EpochTree

batch_format_version = "1.0"
settler_role = Web3.keccak(text="SETTLER_ROLE")


def check_safe_settler(distributor: Contract, safe: str) -> str:
    """The Safe's checksummed address, after checking it holds SETTLER_ROLE on the distributor."""
    if not Web3.is_address(safe):
        raise ChainConfigError(f"--safe `{safe}` is not an address", "safe")
    safe = Web3.to_checksum_address(safe)
    if not distributor.functions.hasRole(settler_role, safe).call():
        raise ChainConfigError(
            f"the Safe {safe} does not hold SETTLER_ROLE on {distributor.address}: have the admin grant it "
            "(grantRole(keccak256('SETTLER_ROLE'), safe)) or deploy with --settler SAFE",
            "safe",
        )
    return safe


def _tx(to: str, data: str) -> dict[str, Any]:
    return {"to": to, "value": "0", "data": data, "contractMethod": None, "contractInputsValues": None}


def safe_batch(
    chain: Chain, distributor: Contract, tree: EpochTree, shortfall_units: int, safe: str
) -> dict[str, Any]:
    """The batch: [approve (when the Safe is the treasury)], [fund(shortfall)], proposeRoot(epoch, root, ...)."""
    transactions = []
    if shortfall_units:
        if distributor.functions.treasury().call() == safe:
            token = token_contract(chain, distributor)
            approve = token.encode_abi("approve", args=[distributor.address, shortfall_units])
            transactions.append(_tx(token.address, approve))
        transactions.append(_tx(distributor.address, distributor.encode_abi("fund", args=[shortfall_units])))
    propose = distributor.encode_abi(
        "proposeRoot",
        args=[tree.epoch, tree.tree.root, tree.tree.total_amount_units, bytes.fromhex(tree.ledger_digest[2:])],
    )
    transactions.append(_tx(distributor.address, propose))
    return {
        "version": batch_format_version,
        "chainId": str(chain.chain_id),
        "createdAt": int(time.time() * 1000),
        "meta": {
            "name": f"royalty settle: epoch {tree.epoch}",
            "description": f"Fund {shortfall_units} units from the treasury and propose root {tree.tree.root_hex} "
            f"(total {tree.tree.total_amount_units}) on {distributor.address}",
            "createdFromSafeAddress": safe,
        },
        "transactions": transactions,
    }


def write_safe_batch(batch_dir: Path, epoch: int, batch: dict[str, Any]) -> Path:
    """Write the batch to `batch_dir/safe-epoch-NNNNNN.json` (atomically: a temporary file, then a rename)."""
    batch_dir.mkdir(parents=True, exist_ok=True)
    path = batch_dir / f"safe-epoch-{epoch:06d}.json"
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(batch, indent=2) + "\n", encoding="utf-8")
    temporary.replace(path)
    return path
