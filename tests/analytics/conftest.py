"""A settled two-epoch ledger shared by the analytics tests (built once per session, never written to)."""

import json
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from ingest.sample import SampleShape, SampleTraffic
from ledger import IngestBatch, Ledger, PartitionOffsets
from schemas import BatchDecoder
from settlement import close_epoch
from settlement.engine.authority import RegistryRules
from settlement.onchain.payout_tree import EpochTree, build_epoch_tree
from settlement.onchain.settle import write_tree
from settlement.onchain.tables import claim_schema, claim_sync_schema, record_schema

shape = SampleShape(
    models=8, contributors=30, compute_providers=3, payers=50, derived_models_ppm=600_000, events_per_day=1_000
)
unregistered_model = "model-unregistered"
epoch_1_events = 2_000
epoch_2_events = 1_000
claimants = 2  # the largest payees of epoch 1 claim


def _append(ledger: Ledger, values: list[bytes], first_offset: int) -> int:
    offsets = list(range(first_offset, first_offset + len(values)))
    batch = IngestBatch.from_messages(values, ["t"] * len(values), [0] * len(values), offsets, BatchDecoder())
    ledger.append(batch, [PartitionOffsets("t", 0, first_offset, first_offset + len(values))])
    return first_offset + len(values)


def _envelope(event_id: str, event_type: str, time: str, data: dict) -> bytes:
    return json.dumps(
        {
            "specversion": "1.0",
            "id": event_id,
            "source": "//tests.example",
            "type": event_type,
            "time": time,
            "datacontenttype": "application/json",
            "data": data,
        }
    ).encode()


def _unrouted(index: int) -> bytes:
    """A call to a model nobody registered: its fee waits in suspense."""
    return _envelope(
        f"0193a000-0000-7000-8000-{index:012d}",
        "ai.inference.metered.v1",
        "2026-11-24T12:00:00Z",
        {
            "model_id": unregistered_model,
            "request_id": f"req_unrouted_{index}",
            "payer": "org-00001",
            "compute_provider": "gpu-000",
            "input_tokens": 100,
            "output_tokens": 10,
            "fee_micros": 450 + index,
            "asset": shape.asset,
        },
    )


def _reversal(index: int, original: bytes) -> bytes:
    return _envelope(
        f"0193b000-0000-7000-8000-{index:012d}",
        "ai.inference.reversed.v1",
        "2026-11-25T00:00:00Z",
        # From another source than the original's, so it names that source (events are keyed by (source, id)).
        {
            "original_event_id": json.loads(original)["id"],
            "reason": "refund",
            "original_source": json.loads(original)["source"],
        },
    )


def build_settled_ledger(location: Path | str, data_path: str | None = None) -> None:
    """Epoch 1: registry, sample calls and bad messages, settled (root recorded); epoch 2, not settled: more calls,
    unroutable ones, reversals."""
    traffic = SampleTraffic(shape, seed=11)
    with Ledger.open(location, data_path) as ledger:
        first = list(traffic.metered(epoch_1_events))
        offset = _append(ledger, [*traffic.registry(), *first, b"{not json", b'{"specversion": "1.0"}'], 0)
        close_epoch(ledger)
        record_claims(ledger, record_settlement(ledger, 1), claimants)
        second = list(traffic.metered(epoch_2_events, first_index=epoch_1_events))
        extra = [_unrouted(i) for i in range(3)] + [_reversal(i, first[i]) for i in range(2)]
        _append(ledger, [*second, *extra, b"\xff"], offset)
        close_epoch(ledger, rules=RegistryRules(reversal_sources=("//tests.example",)))


@pytest.fixture(scope="session")
def settled_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ledger with two closed epochs, shared: a test that writes builds its own with `build_settled_ledger`."""
    directory = tmp_path_factory.mktemp("settled") / "lake"
    build_settled_ledger(directory)
    return directory


def record_settlement(ledger: Ledger, epoch: int) -> EpochTree:
    """Write the tree, its proofs and a confirmed-proposal record for `epoch` as `royalty settle` would (no chain)."""
    payables = pl.from_arrow(
        ledger.connection.execute(
            "SELECT epoch, recipient, amount_micros, payout_address FROM lake.main.settlement_payable WHERE epoch <= ?",
            [epoch],
        ).fetch_arrow_table()
    )
    (closing_snapshot,) = ledger.connection.execute(
        "SELECT closing_snapshot FROM lake.main.settlement_epoch WHERE epoch = ?", [epoch]
    ).fetchone()
    tree = build_epoch_tree(epoch, closing_snapshot, payables)
    assert tree is not None
    written = write_tree(ledger, tree)
    now = datetime.now(UTC)
    record = {
        "epoch": epoch,
        "root": tree.tree.root_hex,
        "total_units": tree.tree.total_amount_units,
        "tx_hash": "0x" + "ab" * 32,
        "block_number": 7,
        "block_hash": "0x" + "cd" * 32,
        "chain_id": 31337,
        "contract": "0x" + "12" * 20,
        "closing_snapshot": closing_snapshot,
        "tree_snapshot": written,
        "outcome": "proposed",
        "recorded_at": now,
    }
    ledger.append_records({"settlement_record": pa.Table.from_pylist([record], schema=record_schema)})
    return tree


def record_claims(ledger: Ledger, tree: EpochTree, count: int) -> list[dict]:
    """Write `Claimed` rows for the `count` largest leaves of `tree` as `royalty sync-claims` would."""
    leaves = sorted(tree.tree.items(), key=lambda leaf: (-leaf[1], leaf[0]))[:count]
    now = datetime.now(UTC)
    rows = [
        {
            "chain_id": 31337,
            "contract": "0x" + "12" * 20,
            "account": account,
            "epoch": tree.epoch,
            "amount_units": units,
            "cumulative_units": units,
            "block_number": 8 + index,
            "block_hash": "0x" + f"{index:02x}" * 32,
            "tx_hash": "0x" + f"{index + 16:02x}" * 32,
            "log_index": 1,
            "synced_at": now,
        }
        for index, (account, units) in enumerate(leaves)
    ]
    sync = {
        "chain_id": 31337,
        "contract": "0x" + "12" * 20,
        "from_block": 7,
        "to_block": 8 + count,
        "to_block_hash": "0x" + "ef" * 32,
        "claims": count,
        "synced_at": now,
    }
    ledger.append_records(
        {
            "settlement_claim": pa.Table.from_pylist(rows, schema=claim_schema),
            "settlement_claim_sync": pa.Table.from_pylist([sync], schema=claim_sync_schema),
        }
    )
    return rows
