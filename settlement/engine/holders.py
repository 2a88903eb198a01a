"""Passing a `holders:<token>` recipient's take on to the token's holders (issue 17), a pure function.

The split credits `holders:<token>` like any contributor, in every allocation group whose policy names it.
Its whole take for the epoch (those credits summed) is then allocated once, by the exact largest-remainder
rule (`allocation.allocate_by_weight`), over the holders' time-weighted balances across the epoch's block
range (`settlement.holders.holder_weights`: a balance held for half the range counts half), in one balanced
entry `e<epoch>:holders:<token>`: the `contributor:holders:<token>` account is debited the take and each holder's
`contributor:<address>` credited its part. Holders are paid at their own address, in the same cumulative
leaves as every other payee. A token with no weighted holder (none synced, or every holder excluded) keeps
the take on `holders:<token>`, unaddressed: it waits there, never lost.
"""

from __future__ import annotations

from collections.abc import Callable

import polars as pl

from settlement.engine.accounts import contributor_prefix, holders_prefix
from settlement.engine.allocation import allocate_by_weight

_i128 = pl.Int128
HolderWeights = dict[str, list[tuple[str, int]]]  # token -> [(holder address, time-weighted balance)], by holder
# The weights, or a function giving them for the tokens the epoch actually credits (read only when needed, so an
# epoch whose policies name a token but credit it nothing never needs that token synced).
HolderWeightSource = HolderWeights | Callable[[list[str]], HolderWeights]


def holder_tokens(policies: pl.DataFrame) -> list[str]:
    """The tokens whose holders any of `policies` names (`holders:<token>` recipients), sorted."""
    if policies.is_empty():
        return []
    recipients = policies.select(pl.col("shares").explode().struct.field("recipient"))["recipient"]
    return sorted({r.removeprefix(holders_prefix) for r in recipients.drop_nulls() if r.startswith(holders_prefix)})


def pass_to_holders(
    epoch: int, credits: pl.DataFrame, source: HolderWeightSource | None
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """The epoch's credits with each weighted `holders:<token>` take replaced by its holders' parts, the
    postings of those entries (posting columns, amounts Int128) and the holders' own payout addresses."""
    postings: list[dict] = []
    parts: list[dict] = []
    passed: set[str] = set()
    takes = credits.filter(pl.col("recipient").str.starts_with(holders_prefix) & (pl.col("amount_micros") != 0))
    tokens = sorted(r.removeprefix(holders_prefix) for r in takes["recipient"].to_list())
    weights = (source(tokens) if callable(source) else source) if tokens and source is not None else {}
    for row in takes.iter_rows(named=True):
        recipient, take = row["recipient"], int(row["amount_micros"])
        holders = weights.get(recipient.removeprefix(holders_prefix), [])
        if not holders or take == 0:
            continue
        passed.add(recipient)
        entry = f"e{epoch}:{recipient}"
        postings.append(_posting(entry, contributor_prefix + recipient, take))
        for holder, amount in allocate_by_weight(take, holders):
            if amount:
                postings.append(_posting(entry, contributor_prefix + holder, -amount))
                parts.append({"recipient": holder, "amount_micros": amount})
    kept = credits.filter(~pl.col("recipient").is_in(sorted(passed)))
    received = pl.DataFrame(parts, schema={"recipient": pl.String, "amount_micros": _i128})
    merged = (
        pl.concat([kept.with_columns(pl.col("amount_micros").cast(_i128)), received])
        .group_by("recipient")
        .agg(pl.col("amount_micros").sum())
        .sort("recipient")
    )
    posting_schema = {
        "entry_id": pl.String,
        "entry_kind": pl.String,
        "account": pl.String,
        "amount_micros": _i128,
        "model_id": pl.String,
        "policy_id": pl.String,
    }
    addresses = pl.DataFrame(
        {"contributor_id": sorted(set(received["recipient"].to_list()))}, schema={"contributor_id": pl.String}
    ).with_columns(payout_address=pl.col("contributor_id"))
    return merged, pl.DataFrame(postings, schema=posting_schema), addresses


def _posting(entry: str, account: str, amount: int) -> dict:
    return {
        "entry_id": entry,
        "entry_kind": "holders",
        "account": account,
        "amount_micros": amount,
        "model_id": None,
        "policy_id": None,
    }
