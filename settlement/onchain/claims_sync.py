"""The use case `sync_claims`: read the distributor's `Claimed` events back into the ledger.

Claims happen on-chain, signed by whoever submits them; the ledger learns of them only by reading
the chain. Each run reads the blocks after the previous run's cursor up to the newest block with the
configured confirmations, in ranges of at most `block_span_max` blocks, and appends each range's
claims together with the range itself (`settlement_claim_sync`) in one ledger transaction. So:

- a rerun, or a run killed midway, never stores a claim twice: a range is stored with its claims or
  not at all, and the next run starts after the last stored range;
- two runs at once cannot both store a range: each range is read and stored holding the
  `claim-sync` step lock (`Ledger.step_lock`, any catalog) after re-reading the cursor, so a run that
  waited starts after what the other stored (the transaction's precondition re-checks the cursor too);
- the first run starts at the contract's first recorded root, else at its deployment block
  (`settlement.onchain.chain_logs`), never at block 0, and no read spans more than `block_span_max` blocks;
- a chain reorganisation deeper than the confirmations waited for, which could remove a stored
  claim, is detected at the next run (the cursor block's hash changed) and stops it with a message.

The `claims` view and the claim rows of the `reconciliation` view read these tables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import duckdb
import pyarrow as pa
from web3.contract import Contract

from ledger import recorder
from ledger.ledger import Ledger
from settlement.onchain import tables as settle_tables
from settlement.onchain.chain import Chain
from settlement.onchain.chain_logs import LogIndex, block_hash, index_logs, log_start_block, read_logs
from settlement.onchain.exceptions import ClaimSyncConflictError

# The step lock (`Ledger.step_lock`) a run holds while it reads and stores one range.
claim_sync_step = "claim-sync"



@dataclass(frozen=True)
class ClaimSyncResult:
    """What one `sync_claims` run read and stored."""

    chain_id: int
    contract: str
    from_block: int
    to_block: int  # the last block read; from_block - 1 when there was nothing new to read
    head_block: int
    claims_added: int
    claimed_units_added: int


ClaimSyncProgress = Callable[[int, int], None]  # (blocks done, blocks to read)


def _cursor(connection: duckdb.DuckDBPyConnection, chain_id: int, contract: str) -> tuple[int, str] | None:
    row = connection.execute(
        f"SELECT to_block, to_block_hash FROM {recorder.table('settlement_claim_sync')} "
        "WHERE chain_id = ? AND lower(contract) = lower(?) ORDER BY to_block DESC LIMIT 1",
        [chain_id, contract],
    ).fetchone()
    return None if row is None else (int(row[0]), str(row[1]))


def _first_block(ledger: Ledger, chain: Chain, distributor: Contract, from_block: int | None) -> int:
    """No claim can precede the contract's first recorded root; without one, its deployment block."""
    ((block,),) = ledger.recorder.read(
        lambda connection: connection.execute(
            f"SELECT min(block_number) FROM {recorder.table('settlement_record')} "
            "WHERE chain_id = ? AND lower(contract) = lower(?)",
            [chain.chain_id, distributor.address],
        ).fetchall(),
        "read the distributor's first recorded root",
    )
    return log_start_block(chain, distributor, from_block) if block is None else int(block)


def _hex(value: Any) -> str:
    return "0x" + bytes(value).hex()


def _claim_rows(chain: Chain, distributor: Contract, from_block: int, to_block: int) -> list[dict]:
    events = read_logs(chain, distributor.events.Claimed, from_block, to_block)
    synced_at = datetime.now(UTC)
    rows = [
        {
            "chain_id": chain.chain_id,
            "contract": distributor.address,
            "account": event["args"]["account"],
            "epoch": int(event["args"]["epoch"]),
            "amount_units": int(event["args"]["amount"]),
            "cumulative_units": int(event["args"]["cumulativeAmount"]),
            "block_number": int(event["blockNumber"]),
            "block_hash": _hex(event["blockHash"]),
            "tx_hash": _hex(event["transactionHash"]),
            "log_index": int(event["logIndex"]),
            "synced_at": synced_at,
        }
        for event in events
    ]
    return sorted(rows, key=lambda row: (row["block_number"], row["log_index"]))


def sync_claims(
    ledger: Ledger,
    chain: Chain,
    distributor: Contract,
    progress: ClaimSyncProgress | None = None,
    from_block: int | None = None,
) -> ClaimSyncResult:
    """Store every `Claimed` event with `chain.confirmations` confirmations that the ledger lacks.

    A first run starts at the first recorded root on this contract, else at `from_block` (the distributor's
    deployment block; None: found on the chain). The range loop is `chain_logs.index_logs`.
    """
    contract = distributor.address
    ledger.ensure_tables()
    stored: list[dict] = []

    def store(start: int, end: int, expected: int | None) -> int:
        rows = _store_range(ledger, chain, distributor, start, end, expected)
        stored.extend(rows)
        return len(rows)

    run = index_logs(
        ledger,
        chain,
        LogIndex(claim_sync_step, lambda connection: _cursor(connection, chain.chain_id, contract), store),
        lambda: _first_block(ledger, chain, distributor, from_block),
        progress,
    )
    return ClaimSyncResult(
        chain.chain_id,
        contract,
        run.first_block,
        run.last_block,
        run.head_block,
        run.rows_added,
        sum(row["amount_units"] for row in stored),
    )


def _store_range(
    ledger: Ledger, chain: Chain, distributor: Contract, start: int, end: int, expected_cursor: int | None
) -> list[dict]:
    """Read the claims of blocks `start..end` and store them with the range, if the cursor is still `expected`."""
    contract = distributor.address
    rows = _claim_rows(chain, distributor, start, end)
    sync_row = {
        "chain_id": chain.chain_id,
        "contract": contract,
        "from_block": start,
        "to_block": end,
        "to_block_hash": block_hash(chain, end),
        "claims": len(rows),
        "synced_at": datetime.now(UTC),
    }

    def range_is_next(connection: duckdb.DuckDBPyConnection) -> None:
        now = _cursor(connection, chain.chain_id, contract)
        if (None if now is None else now[0]) != expected_cursor:
            raise ClaimSyncConflictError(start)

    ledger.append_records(
        {
            "settlement_claim": pa.Table.from_pylist(rows, schema=settle_tables.claim_schema),
            "settlement_claim_sync": pa.Table.from_pylist([sync_row], schema=settle_tables.claim_sync_schema),
        },
        precondition=range_is_next,
    )
    return rows
