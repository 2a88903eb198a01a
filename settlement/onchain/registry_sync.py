"""The use case `sync_registry`: index ModelRegistry's events into the ledger, as `sync_claims` does claims.

Each run reads the blocks after the stored cursor up to the newest block with the configured confirmations,
in ranges of at most `block_span_max` blocks, and appends each range's events (decoded to the ledger's names,
`settlement.chain_registry`) together with the range itself (`registry_sync`, with its last block's hash and
time) in one ledger transaction, holding the `registry-sync` step lock and fenced on the cursor. So a rerun or
a run killed midway never stores an event twice, two runs at once never both store a range, and a
reorganisation deeper than the confirmations waited for is found at the next run (the cursor block's hash
changed) and stops it. The first run starts at the registry's deployment block.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import duckdb
import pyarrow as pa
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import BlockNotFound

from ledger.ledger import Ledger
from settlement.chain_registry import (
    RegistrySource,
    registry_cursor,
    registry_event_schema,
    registry_event_table,
    registry_sync_schema,
    registry_sync_table,
)
from settlement.onchain.chain import Chain, deployed_contract, node_unreachable_errors
from settlement.onchain.chain_logs import LogIndex, index_logs, log_start_block
from settlement.onchain.contract_artifacts import registry_artifact
from settlement.onchain.exceptions import ChainUnavailableError, ClaimSyncConflictError
from settlement.onchain.registry_ids import DATASET, MODEL, recipient_name, word_id

# The step lock (`Ledger.step_lock`) a run holds while it reads and stores one range.
registry_sync_step = "registry-sync"
registry_events = ("ModelRegistered", "DatasetRegistered", "SplitPolicySet", "PayoutAddressSet", "GovernorChanged")
_kinds = {MODEL: "model", DATASET: "dataset"}

RegistrySyncProgress = Callable[[int, int], None]  # (blocks done, blocks to read)


@dataclass(frozen=True)
class RegistrySyncResult:
    """What one `sync_registry` run read and stored."""

    chain_id: int
    contract: str
    from_block: int
    to_block: int  # the last block read; from_block - 1 when there was nothing new to read
    head_block: int
    events_added: int


def registry_contract(chain: Chain, address: str) -> Contract:
    """The ModelRegistry at `address`, after checking that code is deployed there."""
    hint = "; deploy one with `royalty deploy-registry`"
    return deployed_contract(chain, address, registry_artifact().abi, "registry", hint)


def _hex(value: Any) -> str:
    return "0x" + bytes(value).hex()


def _block(chain: Chain, number: int) -> tuple[str, datetime]:
    try:
        block = chain.w3.eth.get_block(number)
    except BlockNotFound:
        return "missing (the chain is shorter now)", datetime.fromtimestamp(0, UTC)
    except (*node_unreachable_errors, OSError, ConnectionError) as error:
        raise ChainUnavailableError(chain.rpc_url, type(error).__name__) from None
    return _hex(block["hash"]), datetime.fromtimestamp(int(block["timestamp"]), UTC)


def _detail(name: str, args: Any) -> tuple[str | None, dict]:
    """The subject and the arguments of one event, in the ledger's names."""
    if name == "ModelRegistered":
        parents = [{"model_id": word_id(p["modelId"]), "share_ppm": int(p["sharePpm"])} for p in args["parents"]]
        return word_id(args["modelId"]), {
            "owner": args["owner"],
            "governor": args["governor"],
            "parents": parents,
            "min_derivative_share_ppm": int(args["minDerivativeSharePpm"]),
            "weights_digest": _hex(args["weightsDigest"]),
            "weights_uri": args["weightsUri"],
        }
    if name == "DatasetRegistered":
        return word_id(args["datasetId"]), {
            "owner": args["owner"],
            "governor": args["governor"],
            "content_digest": _hex(args["contentDigest"]),
            "content_uri": args["contentUri"],
        }
    if name == "SplitPolicySet":
        shares = [
            {"recipient": recipient_name(int(s["kind"]), s["id"]), "share_ppm": int(s["sharePpm"])}
            for s in args["shares"]
        ]
        return word_id(args["subjectId"]), {
            "subject_kind": _kinds[int(args["subjectKind"])],
            "effective_from": int(args["effectiveFrom"]),
            "compute_share_ppm": int(args["computeSharePpm"]),
            "shares": shares,
        }
    if name == "PayoutAddressSet":
        return args["account"], {"account": args["account"], "payout": args["payout"]}
    return word_id(args["subjectId"]), {"subject_kind": _kinds[int(args["subjectKind"])], "governor": args["governor"]}


def _event_rows(chain: Chain, registry: Contract, start: int, end: int) -> list[dict]:
    """Every registry event of blocks `start..end`, decoded, in chain order (one `eth_getLogs` per range)."""
    by_topic = {}
    for name in registry_events:
        event = getattr(registry.events, name)()
        by_topic[Web3.to_hex(hexstr=event.topic) if isinstance(event.topic, str) else Web3.to_hex(event.topic)] = (
            name,
            event,
        )
    try:
        logs = chain.w3.eth.get_logs({"address": registry.address, "fromBlock": start, "toBlock": end})
    except (*node_unreachable_errors, OSError, ConnectionError) as error:
        raise ChainUnavailableError(chain.rpc_url, type(error).__name__) from None
    times: dict[int, datetime] = {}
    synced_at = datetime.now(UTC)
    rows = []
    for log in sorted(logs, key=lambda item: (item["blockNumber"], item["logIndex"])):
        known = by_topic.get(Web3.to_hex(log["topics"][0])) if log["topics"] else None
        if known is None:
            continue  # an event this indexer does not read (none today)
        name, event = known
        decoded = event.process_log(log)
        subject, detail = _detail(name, decoded["args"])
        number = int(log["blockNumber"])
        if number not in times:
            times[number] = _block(chain, number)[1]
        rows.append(
            {
                "chain_id": chain.chain_id,
                "contract": registry.address,
                "block_number": number,
                "block_hash": _hex(log["blockHash"]),
                "block_time": times[number],
                "tx_hash": _hex(log["transactionHash"]),
                "log_index": int(log["logIndex"]),
                "event": name,
                "subject": subject,
                "detail": json.dumps(detail, sort_keys=True, separators=(",", ":")),
                "synced_at": synced_at,
            }
        )
    return rows


def sync_registry(
    ledger: Ledger,
    chain: Chain,
    registry: Contract,
    progress: RegistrySyncProgress | None = None,
    from_block: int | None = None,
) -> RegistrySyncResult:
    """Store every registry event with `chain.confirmations` confirmations that the ledger lacks.

    A first run starts at `from_block` (the registry's deployment block; None: found on the chain). The range
    loop is `chain_logs.index_logs`.
    """
    source = RegistrySource(chain.chain_id, registry.address)
    ledger.ensure_tables()

    def cursor(connection: duckdb.DuckDBPyConnection) -> tuple[int, str] | None:
        found = registry_cursor(connection, source.chain_id, source.contract)
        return None if found is None else (found.block_number, found.block_hash)

    run = index_logs(
        ledger,
        chain,
        LogIndex(
            registry_sync_step,
            cursor,
            lambda start, end, expected: _store_range(ledger, chain, registry, start, end, expected),
        ),
        lambda: log_start_block(chain, registry, from_block),
        progress,
        reorganised=("registry events", "`registry_event` with the registry's events"),
    )
    return RegistrySyncResult(
        source.chain_id, source.contract, run.first_block, run.last_block, run.head_block, run.rows_added
    )


def _store_range(
    ledger: Ledger, chain: Chain, registry: Contract, start: int, end: int, expected_cursor: int | None
) -> int:
    """Read the events of blocks `start..end` and store them with the range, if the cursor is still `expected`."""
    rows = _event_rows(chain, registry, start, end)
    end_hash, end_time = _block(chain, end)
    sync_row = {
        "chain_id": chain.chain_id,
        "contract": registry.address,
        "from_block": start,
        "to_block": end,
        "to_block_hash": end_hash,
        "to_block_time": end_time,
        "events": len(rows),
        "synced_at": datetime.now(UTC),
    }

    def range_is_next(connection: duckdb.DuckDBPyConnection) -> None:
        now = registry_cursor(connection, chain.chain_id, registry.address)
        if (None if now is None else now.block_number) != expected_cursor:
            raise ClaimSyncConflictError(start, "sync-registry", "registry events")

    ledger.append_records(
        {
            registry_event_table: pa.Table.from_pylist(rows, schema=registry_event_schema),
            registry_sync_table: pa.Table.from_pylist([sync_row], schema=registry_sync_schema),
        },
        precondition=range_is_next,
    )
    return len(rows)
