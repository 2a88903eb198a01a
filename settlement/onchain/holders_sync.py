"""The use case `sync_holders`: index an ERC-20's `Transfer` logs into the ledger, as `sync_claims` does claims.

Each run reads the blocks after the token's stored cursor up to the newest block with the configured
confirmations, in ranges of at most `block_span_max` blocks (`chain_logs.index_logs`), and appends each
range's transfers (`holder_transfer`) together with the range itself (`holder_sync`, with its last block's
hash and time) in one ledger transaction, holding the `holder-sync` step lock and fenced on the cursor. A
rerun or a run killed midway never stores a transfer twice; a reorganisation deeper than the confirmations is
found at the next run (the cursor block's hash changed) and stops it. The first run starts at the token's
deployment block (or `--from-block`): balances are sums of transfers, so every transfer must be there.

Before a range is stored, the balances its transfers give are checked against the token's own `balanceOf`
at the range's last block for a sample of holders (`holder_check_sample_max`: those the range touched and
some it did not). A token whose balances change without a `Transfer` (rebasing, a fee kept silently) fails
that check: the run stops naming the holder and both balances, and nothing of that range is written.

A range after which enough transfers were stored since the last balance checkpoint also stores, in the same
transaction, every address's balance at its last block (`settlement.holders.balance_checkpoint`): balances at a
later block and epochs' weights then read that checkpoint and the transfers after it, not every transfer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb
import pyarrow as pa
from web3 import Web3
from web3.contract import Contract

from ledger import recorder
from ledger.ledger import Ledger
from settlement.holders import (
    balance_checkpoint,
    holder_checkpoint_table,
    holder_cursor,
    holder_sync_schema,
    holder_sync_table,
    holder_transfer_schema,
    holder_transfer_table,
    holder_value_units_max,
    zero_address,
)
from settlement.onchain.chain import Chain, deployed_contract, node_unreachable_errors
from settlement.onchain.chain_logs import LogIndex, block_hash, block_ranges, index_logs, log_start_block
from settlement.onchain.contract_artifacts import token_artifact
from settlement.onchain.exceptions import (
    ChainUnavailableError,
    ClaimSyncConflictError,
    HolderTokenRefusedError,
)

# The step lock (`Ledger.step_lock`) a run holds while it reads and stores one range.
holder_sync_step = "holder-sync"
# Holders whose balance is checked against `balanceOf` per stored range: half among those the range touched,
# half among the others (a rebase moves every balance). Each is one `eth_call`.
holder_check_sample_max = 8

HolderSyncProgress = Callable[[int, int], None]  # (blocks done, blocks to read)


@dataclass(frozen=True)
class HolderSyncResult:
    """What one `sync_holders` run read and stored."""

    chain_id: int
    token: str
    from_block: int
    to_block: int  # the last block read; from_block - 1 when there was nothing new to read
    head_block: int
    transfers_added: int


def holder_token_contract(chain: Chain, address: str) -> Contract:
    """The ERC-20 at `address` (Transfer and balanceOf), after checking that code is deployed there."""
    return deployed_contract(chain, address, token_artifact().abi, "token")


def sync_holders(
    ledger: Ledger,
    chain: Chain,
    token: Contract,
    progress: HolderSyncProgress | None = None,
    from_block: int | None = None,
) -> HolderSyncResult:
    """Store every `Transfer` of `token` with `chain.confirmations` confirmations that the ledger lacks.

    A first run starts at `from_block` (the token's deployment block; None: found on the chain).
    """
    ledger.ensure_tables()

    def cursor(connection: duckdb.DuckDBPyConnection) -> tuple[int, str] | None:
        found = holder_cursor(connection, token.address, chain.chain_id)
        return None if found is None else (found.block_number, found.block_hash)

    def store(start: int, end: int, expected: int | None) -> int:
        return _store_range(ledger, chain, token, start, end, expected, cursor)

    run = index_logs(
        ledger,
        chain,
        LogIndex(holder_sync_step, cursor, store),
        lambda: log_start_block(chain, token, from_block),
        progress,
        reorganised=("token transfers", "`holder_balances` with the token's Transfer logs"),
    )
    return HolderSyncResult(
        chain.chain_id, token.address, run.first_block, run.last_block, run.head_block, run.rows_added
    )


# keccak("Transfer(address,address,uint256)"): the ERC-20 event's first topic.
transfer_topic = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"


def _hex(value: object) -> str:
    """A log field as 0x text, whether the provider answered text (a JSON-RPC node) or bytes / an int."""
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    if isinstance(value, int):
        return hex(value)
    return str(value)


def _raw_transfer_logs(chain: Chain, token: Contract, start: int, end: int) -> list[dict]:
    """The token's Transfer logs of blocks `start..end` as the node answers them (`eth_getLogs` in ranges of at
    most `block_span_max` blocks): web3's per-log ABI decoding and address checksumming cost about 5 ms a log."""
    logs: list[dict] = []
    for first, last in block_ranges(start, end):
        query = {"address": token.address, "topics": [transfer_topic], "fromBlock": hex(first), "toBlock": hex(last)}
        try:
            logs += _logs_answered(chain, query)
        except (*node_unreachable_errors, OSError, ConnectionError) as error:
            raise ChainUnavailableError(chain.rpc_url, type(error).__name__) from None
    return logs


def _logs_answered(chain: Chain, query: dict) -> list:
    """`eth_getLogs` of `query`: a JSON-RPC node's answer as it is; an in-process chain (the demo's eth-tester, no
    endpoint) through web3, which turns the request into its Python call."""
    if getattr(chain.w3.provider, "endpoint_uri", None) is None:
        return list(chain.w3.eth.get_logs(query))  # type: ignore[arg-type]
    answer = chain.w3.provider.make_request("eth_getLogs", [query])  # type: ignore[arg-type]
    if "error" in answer:
        raise ChainUnavailableError(chain.rpc_url, f"eth_getLogs answered {answer['error']}")
    return answer["result"]


def _transfer_rows(chain: Chain, token: Contract, start: int, end: int) -> list[dict]:
    synced_at = datetime.now(UTC)
    checksummed: dict[str, str] = {}  # a holder's checksum once per range, not once per log

    def address(topic: object) -> str:
        raw = "0x" + _hex(topic)[-40:]
        if raw not in checksummed:
            checksummed[raw] = Web3.to_checksum_address(raw)
        return checksummed[raw]

    rows = []
    for log in _raw_transfer_logs(chain, token, start, end):
        topics, data = log["topics"], _hex(log["data"])
        if len(topics) != 3 or len(data) != 66:  # an ERC-721 Transfer indexes its third argument
            raise HolderTokenRefusedError(
                token.address, "its Transfer logs are not ERC-20 transfers (from, to indexed; the value as data)",
                start, end,
            )
        value = int(data, 16)
        if value > holder_value_units_max:
            raise HolderTokenRefusedError(
                token.address, f"a transfer of {value} units exceeds the {holder_value_units_max} the ledger sums",
                start, end,
            )
        block = log["blockNumber"]
        rows.append(
            {
                "chain_id": chain.chain_id,
                "token": token.address,
                "block_number": block if isinstance(block, int) else int(block, 16),
                "block_hash": _hex(log["blockHash"]),
                "tx_hash": _hex(log["transactionHash"]),
                "log_index": log["logIndex"] if isinstance(log["logIndex"], int) else int(log["logIndex"], 16),
                "from_address": address(topics[1]),
                "to_address": address(topics[2]),
                "value_units": str(value),
                "synced_at": synced_at,
            }
        )
    return sorted(rows, key=lambda row: (row["block_number"], row["log_index"]))


def _sample(addresses: set[str], end: int, count: int) -> list[str]:
    """Up to `count` of `addresses`, chosen by a hash of each with the block (a different sample each range)."""
    ranked = sorted(addresses, key=lambda a: hashlib.sha256(f"{a.lower()}:{end}".encode()).digest())
    return ranked[:count]


def _stored_balances(connection: duckdb.DuckDBPyConnection, chain_id: int, token: str, holders: list[str]) -> dict:
    if not holders or holder_transfer_table not in recorder.existing_tables(connection):
        return {}
    table = recorder.table(holder_transfer_table)
    rows = connection.execute(
        f"""SELECT holder, sum(delta) FROM (
                SELECT to_address AS holder, value_units::HUGEINT AS delta FROM {table}
                WHERE chain_id = $chain AND lower(token) = lower($token) AND to_address IN (SELECT unnest($h))
                UNION ALL
                SELECT from_address, -(value_units::HUGEINT) FROM {table}
                WHERE chain_id = $chain AND lower(token) = lower($token) AND from_address IN (SELECT unnest($h))
            ) GROUP BY holder""",
        {"chain": chain_id, "token": token, "h": holders},
    ).fetchall()
    return {str(holder): int(balance) for holder, balance in rows}


def _other_holders(connection: duckdb.DuckDBPyConnection, chain_id: int, token: str, end: int, count: int) -> set:
    """Up to `count` stored holders (recipients of an earlier transfer), by a hash varying with `end`."""
    if count <= 0 or holder_transfer_table not in recorder.existing_tables(connection):
        return set()
    rows = connection.execute(
        f"SELECT DISTINCT to_address FROM {recorder.table(holder_transfer_table)} "
        "WHERE chain_id = ? AND lower(token) = lower(?) AND to_address <> ? "
        "ORDER BY hash(to_address || ?::VARCHAR), to_address LIMIT ?",
        [chain_id, token, zero_address, end, count],
    ).fetchall()
    return {str(holder) for (holder,) in rows}


def _sampled_balances(
    connection: duckdb.DuckDBPyConnection, chain_id: int, token: str, touched: set[str], end: int
) -> tuple[list[str], dict]:
    """The holders to check (half of those `touched`, the rest other indexed holders) and their indexed balances."""
    holders = _sample(touched, end, holder_check_sample_max // 2)
    others = _other_holders(connection, chain_id, token, end, holder_check_sample_max)
    holders += _sample(others - set(holders), end, holder_check_sample_max - len(holders))
    return holders, _stored_balances(connection, chain_id, token, holders)


def _check_balances(ledger: Ledger, chain: Chain, token: Contract, rows: list[dict], start: int, end: int) -> int:
    """Compare the indexed balance of a sample of holders at `end` with `balanceOf`; return how many were checked."""
    touched = {r["to_address"] for r in rows} | {r["from_address"] for r in rows}
    touched.discard(zero_address)
    holders, indexed = ledger.recorder.read(
        lambda connection: _sampled_balances(connection, chain.chain_id, token.address, touched, end),
        "read the indexed balances",
    )
    for row in rows:
        value = int(row["value_units"])
        indexed[row["to_address"]] = indexed.get(row["to_address"], 0) + value
        indexed[row["from_address"]] = indexed.get(row["from_address"], 0) - value
    for holder in holders:
        try:
            on_chain = int(token.functions.balanceOf(holder).call(block_identifier=end))
        except (*node_unreachable_errors, OSError, ConnectionError) as error:
            raise ChainUnavailableError(chain.rpc_url, type(error).__name__) from None
        if on_chain != indexed.get(holder, 0):
            raise HolderTokenRefusedError(
                token.address,
                f"holder {holder} has {on_chain} units at block {end} by balanceOf but {indexed.get(holder, 0)} "
                "by its Transfer logs",
                start,
                end,
            )
    return len(holders)


def _store_range(
    ledger: Ledger,
    chain: Chain,
    token: Contract,
    start: int,
    end: int,
    expected_cursor: int | None,
    cursor: Callable[[duckdb.DuckDBPyConnection], tuple[int, str] | None],
) -> int:
    """Read the transfers of blocks `start..end`, check balances, store them with the range if still next."""
    rows = _transfer_rows(chain, token, start, end)
    checked = _check_balances(ledger, chain, token, rows, start, end)
    block = chain.w3.eth.get_block(end)
    sync_row = {
        "chain_id": chain.chain_id,
        "token": token.address,
        "from_block": start,
        "to_block": end,
        "to_block_hash": block_hash(chain, end),
        "to_block_time": datetime.fromtimestamp(int(block["timestamp"]), UTC),
        "transfers": len(rows),
        "checked_holders": checked,
        "synced_at": datetime.now(UTC),
    }

    def range_is_next(connection: duckdb.DuckDBPyConnection) -> None:
        now = cursor(connection)
        if (None if now is None else now[0]) != expected_cursor:
            raise ClaimSyncConflictError(start, "sync-holders", "token transfers")

    transfers = pa.Table.from_pylist(rows, schema=holder_transfer_schema)
    checkpoint = ledger.recorder.read(
        lambda connection: balance_checkpoint(connection, chain.chain_id, token.address, end, transfers),
        "compute a balance checkpoint",
    )
    records = {
        holder_transfer_table: transfers,
        holder_sync_table: pa.Table.from_pylist([sync_row], schema=holder_sync_schema),
    }
    if checkpoint is not None:
        records[holder_checkpoint_table] = checkpoint
    ledger.append_records(records, precondition=range_is_next)
    return len(rows)
