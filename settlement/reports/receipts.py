"""`royalty receipt`: a payer's proof that one of its metered events was counted in a settled epoch.

The group trees are not stored: the ledger keeps the events, and the bundle (`groups.parquet`, `events_root`) each
group's sum-tree root. A receipt is recomputed on demand: the event's model is read from the ledger, that model's
events in the epoch that split the event are routed again (`bundle.receipt_events`, the routing `publish` uses,
on one model: the epoch is not planned again), the event's group found, and the sum-tree path from the event to
the group's root returned (`sum_tree.proof`). `royalty audit --receipt FILE --bundle DIR` checks it
against the published bundle without the ledger.
"""

from dataclasses import dataclass

import polars as pl

from ledger import recorder
from ledger.ledger import Ledger
from settlement.engine.authority import RegistryRules
from settlement.exceptions import SettlementError
from settlement.onchain.settle import read_stored_manifest
from settlement.reports import sum_tree
from settlement.reports.bundle import group_keys, group_leaves, receipt_events

receipt_version = "settlement-receipt-v1"


class ReceiptError(SettlementError):
    """No receipt for that event: it was never metered, or no closed epoch split it (yet)."""


@dataclass(frozen=True)
class Receipt:
    body: dict

    @property
    def summary(self) -> str:
        b = self.body
        return (
            f"event {b['event']['source']}/{b['event']['event_id']} ({b['event']['fee_micros']} micros) counted in "
            f"epoch {b['epoch']}, group {b['group']['model_id']} / {b['group']['compute_provider']} / "
            f"{b['group']['hour']} ({b['kind']}; {len(b['proof'])} proof steps to root {b['events_root']})"
        )


def _closed_epochs(ledger: Ledger, from_snapshot: int) -> list[int]:
    epochs = ledger.recorder.frame(
        f"SELECT epoch FROM {recorder.table('settlement_epoch')} WHERE closing_snapshot >= ? ORDER BY epoch",
        [from_snapshot],
    )
    return [int(epoch) for epoch in epochs["epoch"]]


def _model_of(ledger: Ledger, source: str, event_id: str) -> str | None:
    found = ledger.recorder.frame(
        f"SELECT model_id FROM {recorder.table('inference_metered')} WHERE event_id = ? AND source = ? LIMIT 1",
        [event_id, source],
    )
    return str(found["model_id"][0]) if found.height else None


def payer_receipt(ledger: Ledger, source: str, event_id: str, rules: RegistryRules | None = None) -> Receipt:
    """The receipt of event (`source`, `event_id`): the first closed epoch at or after its arrival whose new or
    released events hold it. Raises `ReceiptError` saying why there is none."""
    arrived = ledger.recorder.first_inserting_snapshot("inference_metered", 0, "event_id", event_id)
    if arrived is None:
        raise ReceiptError(f"no metered event with id {event_id!r} in this ledger; check --source and --event-id")
    model_id = _model_of(ledger, source, event_id)
    if model_id is None:
        raise ReceiptError(f"no metered event {source}/{event_id} in this ledger; check --source and --event-id")
    for epoch in _closed_epochs(ledger, arrived):
        events = receipt_events(ledger, epoch, model_id, rules)
        mine = events.filter((pl.col("source") == source) & (pl.col("event_id") == event_id))
        if mine.height:
            committed = ledger.recorder.read(lambda c, at=epoch: read_stored_manifest(c, at), "read a manifest")
            if committed is not None and b'"events"' not in committed:
                raise ReceiptError(
                    f"epoch {epoch}, which split event {source}/{event_id}, was settled without payer receipts "
                    "(payer_receipts off): its bundle commits to no event root, so no receipt can be checked"
                )
            return receipt_from(epoch, events, mine.row(0, named=True))
    raise ReceiptError(
        f"event {source}/{event_id} was not split by any closed epoch: it is held in suspense (its route is "
        "incomplete), was cancelled by a reversal, or its epoch is not closed yet: run `royalty close-epoch` or "
        "`royalty settle` and ask again, or look it up with `royalty sql`"
    )


def receipt_from(epoch: int, events: pl.DataFrame, row: dict) -> Receipt:
    """The receipt of `row`, one of epoch `epoch`'s routed `events` (`EpochBundle.events`)."""
    group = events.filter(*(pl.col(k) == row[k] for k in group_keys))
    leaves = group_leaves(group)
    index = next(i for i, (s, e, _) in enumerate(leaves) if (s, e) == (row["source"], row["event_id"]))
    nodes = [sum_tree.leaf(*t) for t in leaves]
    top = sum_tree.root(nodes)
    body = {
        "receipt_version": receipt_version,
        "epoch": epoch,
        "kind": row["kind"],
        "group": {
            "model_id": row["model_id"],
            "pool_id": row["pool_id"],
            "compute_provider": row["compute_provider"],
            "compute_share_ppm": int(row["compute_share_ppm"]),
            "hour": row["hour"].strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
        "event": {"source": row["source"], "event_id": row["event_id"], "fee_micros": int(row["fee_micros"])},
        "proof": sum_tree.proof(nodes, index),
        "events_root": "0x" + top.hash.hex(),
        "group_fee_micros": top.fee_micros,
    }
    return Receipt(body)
