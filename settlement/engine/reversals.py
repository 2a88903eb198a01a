"""Rule 7: what each reversal of an epoch does, decided before any money moves.

A reversal names its original by id within its own source, or within `original_source` when it
gives one (events are keyed by (source, id)); sets below hold `splits.key_of` keys.

A reversal of an event that is settled (split in an earlier epoch, directly or on release from
suspense) takes its fee back through the same route, resolved with the registry as known when the
original was settled. A reversal of an event that is still unsplit (arrived in this epoch, or held
in suspense) cancels it. A reversal of an unknown or already reversed event, or from a source that
may not reverse it (neither the original's source nor one `reversal_sources` lists), is a dead letter.
Among reversals of one event in one epoch, the earliest (event time, then id) wins. A reversal id is applied
once: a copy of a reversal an earlier epoch applied (resent with another event time) is a dead letter.
"""

import bisect
from enum import StrEnum

import polars as pl

from schemas.errors import require
from schemas.reason_codes import ReasonCode
from settlement.engine.splits import event_columns, key_of


class ReversalOutcome(StrEnum):
    """What a reversal does: the `outcome` column of `settlement_reversal`."""

    taken_back = "taken_back"  # of a settled event: its fee back through the route it was settled by
    cancelled = "cancelled"  # of an unsplit event (new or held in suspense): it is never split
    dead_letter = "dead_letter"  # of an unknown or already reversed event, or from a source that may not


class ReleaseOutcome(StrEnum):
    """How an event held in suspense leaves it: the `outcome` column of `settlement_suspense_release`."""

    split = "split"  # its route became complete: split in the releasing epoch
    reversed = "reversed"  # a reversal cancelled it


taken_back, cancelled, dead_letter = ReversalOutcome.taken_back, ReversalOutcome.cancelled, ReversalOutcome.dead_letter


def classify(
    reversals: pl.DataFrame,
    originals: pl.DataFrame,
    held_ids: set[str],
    reversed_before: set[str],
    released_before: dict[str, int],
    epoch_closings: dict[int, int],
    previous_snapshot: int,
    reversal_sources: tuple[str, ...] = (),
    applied_before: dict[str, int] | None = None,
) -> pl.DataFrame:
    """One row per reversal: outcome, reason, the original's fields and the snapshot it was settled at.

    `originals` are the metered rows the reversals name, with the snapshot each arrived in
    (`arrival_snapshot`); `released_before` maps an id released from suspense to its epoch. Only the
    original's own source, or one of `reversal_sources`, may reverse it (else `unauthorized_source`).
    `applied_before` maps the key of a reversal (its own source and id) an earlier epoch applied to that epoch: a
    copy of it (a resend with another event time, which ingest stores) is a dead letter, never applied again.
    """
    applied_before = applied_before or {}
    by_key = {key_of(row["source"], row["event_id"]): row for row in originals.iter_rows(named=True)}
    closings = sorted(epoch_closings.values())
    closing_epoch = {snapshot: epoch for epoch, snapshot in epoch_closings.items()}
    claimed: set[str] = set()
    rows = []
    for reversal in reversals.sort(["event_time", "source", "event_id"]).iter_rows(named=True):
        target = reversal["original_event_id"]
        target_source = reversal.get("original_source") or reversal["source"]
        key = key_of(target_source, target)
        original = by_key.get(key)
        row = {
            "event_id": reversal["event_id"],
            "source": reversal["source"],
            "original_event_id": target,
            "original_source": target_source,
            "outcome": dead_letter.value,
            "reason": None,
            "reason_code": None,
            "settled_snapshot": None,
            **{c: None for c in event_columns if c not in ("event_id", "source")},
        }
        applied_in = applied_before.get(key_of(reversal["source"], reversal["event_id"]))
        if applied_in is not None:
            row["reason"] = (
                f"reversal `{reversal['event_id']}` of source `{reversal['source']}` was applied in epoch "
                f"{applied_in}: a copy of it (another event time) is not applied again; a new reversal needs a new id"
            )
            row["reason_code"] = ReasonCode.reversal_repeated.value
        elif original is None:
            row["reason"] = (
                f"reversal of unknown event `{target}` of source `{target_source}`: no metered event with that "
                "source and id in the ledger (a reversal names another source's event with `original_source`)"
            )
            row["reason_code"] = ReasonCode.reversal_unresolved.value
        elif reversal["source"] != target_source and reversal["source"] not in reversal_sources:
            row["reason"] = (
                f"unauthorized source `{reversal['source']}`: it may not reverse event `{target}` of source "
                f"`{target_source}`; only that source or one `reversal_sources` lists may"
            )
            row["reason_code"] = ReasonCode.unauthorized_source.value
        elif key in reversed_before or key in claimed:
            row["reason"] = f"reversal of already reversed event `{target}` of source `{target_source}`"
            row["reason_code"] = ReasonCode.reversal_repeated.value
        else:
            claimed.add(key)
            row.update({c: original[c] for c in event_columns if c not in ("event_id", "source")})
            row["fee_micros"] = -original["fee_micros"]
            if key in held_ids or original["arrival_snapshot"] > previous_snapshot:
                row["outcome"] = cancelled.value
            else:
                row["outcome"] = taken_back.value
                if key in released_before:
                    row["settled_snapshot"] = epoch_closings[released_before[key]]
                else:
                    # The epoch an event arrived in is the first one closing at or after its snapshot.
                    index = bisect.bisect_left(closings, original["arrival_snapshot"])
                    require(index < len(closings), f"event `{target}` arrived by the last closed epoch")
                    require(closings[index] in closing_epoch, f"snapshot {closings[index]} closes an epoch")
                    row["settled_snapshot"] = closings[index]
        rows.append(row)
    return pl.DataFrame(rows, schema=classified_schema)


classified_schema = {
    "event_id": pl.String,
    "source": pl.String,
    "original_event_id": pl.String,
    "original_source": pl.String,
    "outcome": pl.String,
    "reason": pl.String,
    "reason_code": pl.String,  # a schemas.reason_codes.ReasonCode, for a dead letter
    "settled_snapshot": pl.Int64,
    "event_time": pl.Datetime("us", "UTC"),
    "model_id": pl.String,
    "payer": pl.String,
    "compute_provider": pl.String,
    "fee_micros": pl.Int64,
}
