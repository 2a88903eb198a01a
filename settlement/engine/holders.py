"""Passing a `holders:<token>` recipient's take on to the token's holders (issue 17), a pure function.

The split credits `holders:<token>` like any contributor, in every allocation group whose policy names it.
Its whole take for the epoch (those credits summed) is then allocated once, by the exact largest-remainder
rule (`allocation.allocate_by_weight`), over the holders' time-weighted balances across the epoch's block
range (`settlement.holders.holder_weights`: a balance held for half the range counts half), in one balanced
entry `e<epoch>:holders:<token>`: the `contributor:holders:<token>` account is debited the take and each holder's
`contributor:<address>` credited its part. Holders are paid at their own address, in the same cumulative
leaves as every other payee. A token with no weighted holder (none synced, or every holder excluded) keeps
the take on `holders:<token>`, unaddressed: it waits there, never lost.

Dust (`holder_dust_units_min`, docs/spec/settlement-v3.md): a holder whose part plus what it carried in stays
below the threshold is not credited; the amount is carried on `holders-dust:<token>` (in the same entry) and
recorded per holder (`settlement_holder_dust`), and paid in the first later epoch paying that token's holders in
which the holder's accumulated amount reaches the threshold.
"""

from __future__ import annotations

from collections.abc import Callable

import polars as pl

from settlement.engine.accounts import contributor_prefix, holder_dust_prefix, holders_prefix
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


dust_schema = {"token": pl.String, "holder": pl.String, "carried_micros": pl.Int64}


def pass_to_holders(
    epoch: int,
    credits: pl.DataFrame,
    source: HolderWeightSource | None,
    dust: pl.DataFrame | None = None,
    dust_units_min: int = 0,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """The epoch's credits with each weighted `holders:<token>` take replaced by its holders' parts, the
    postings of those entries (posting columns, amounts Int128), the holders' own payout addresses, and the
    holders' dust rows whose carried amount changed (`dust_schema`).

    `dust` (`dust_schema`) is what earlier epochs carried per token and holder. A holder's accumulated amount
    (its part plus what it carried in) strictly between 0 and `dust_units_min` is carried forward on
    `holders-dust:<token>` instead of credited; any other accumulated amount (at or past the threshold, or
    negative after a reversal) is credited, and the carried amount goes to 0. With a threshold of 0 nothing is
    ever carried.
    """
    postings: list[pl.DataFrame] = []
    received: list[pl.DataFrame] = []
    dust_rows: list[pl.DataFrame] = []
    passed: set[str] = set()
    takes = credits.filter(pl.col("recipient").str.starts_with(holders_prefix) & (pl.col("amount_micros") != 0))
    tokens = sorted(r.removeprefix(holders_prefix) for r in takes["recipient"].to_list())
    weights = (source(tokens) if callable(source) else source) if tokens and source is not None else {}
    carried = _carried(dust)
    for row in takes.iter_rows(named=True):
        recipient, take = row["recipient"], int(row["amount_micros"])
        token = recipient.removeprefix(holders_prefix)
        holders = weights.get(token, [])
        if not holders or take == 0:
            continue
        passed.add(recipient)
        entry = f"e{epoch}:{recipient}"
        paid, changed = carry_dust(allocate_by_weight(take, holders), carried.get(token, {}), dust_units_min)
        moved = sum(after - carried.get(token, {}).get(holder, 0) for holder, after in changed)
        # Columns, not a dict per holder: at a million holders the dicts cost seconds.
        paid_holders = [holder for holder, _ in paid]
        paid_micros = pl.Series("amount_micros", [amount for _, amount in paid], _i128)
        accounts = [contributor_prefix + recipient, *(contributor_prefix + holder for holder in paid_holders)]
        amounts = [take, *(-amount for _, amount in paid)]  # negated here: polars has no Int128 negation
        if moved:
            accounts.append(holder_dust_prefix + token)
            amounts.append(-moved)
        postings.append(_postings(entry, accounts, pl.Series(amounts, dtype=_i128)))
        received.append(
            pl.DataFrame({"recipient": pl.Series(paid_holders, dtype=pl.String), "amount_micros": paid_micros})
        )
        dust_rows.append(
            pl.DataFrame(
                {"token": token, "holder": [h for h, _ in changed], "carried_micros": [a for _, a in changed]},
                schema=dust_schema,
            )
        )
    kept = credits.filter(~pl.col("recipient").is_in(sorted(passed)))
    received_frame = pl.concat([pl.DataFrame(schema={"recipient": pl.String, "amount_micros": _i128}), *received])
    merged = (
        pl.concat([kept.with_columns(pl.col("amount_micros").cast(_i128)), received_frame])
        .group_by("recipient")
        .agg(pl.col("amount_micros").sum())
        .sort("recipient")
    )
    addresses = received_frame.select(pl.col("recipient").unique().sort().alias("contributor_id")).with_columns(
        payout_address=pl.col("contributor_id")
    )
    changed_dust = pl.concat([pl.DataFrame(schema=dust_schema), *dust_rows]).sort("token", "holder")
    return merged, pl.concat([pl.DataFrame(schema=posting_schema), *postings]), addresses, changed_dust


def carry_dust(
    parts: list[tuple[str, int]], carried_in: dict[str, int], dust_units_min: int
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Apply the dust threshold to one token's allocated `parts` (holder, amount): returns the holders credited
    (holder, amount, non-zero) and the holders whose carried amount changed (holder, carried after), each in
    `parts`' order, then the carried-only holders'."""
    if not carried_in and dust_units_min <= 0:  # nothing carried in or out: every non-zero part is paid
        return [(holder, amount) for holder, amount in parts if amount], []
    paid, changed = [], []
    amounts = dict(parts)
    holders = [*amounts, *(holder for holder in carried_in if holder not in amounts)]  # callers sort what they keep
    for holder in holders:
        before = carried_in.get(holder, 0)
        accumulated = amounts.get(holder, 0) + before
        after = accumulated if 0 < accumulated < dust_units_min else 0
        if accumulated and not after:
            paid.append((holder, accumulated))
        if after != before:
            changed.append((holder, after))
    return paid, changed


def _carried(dust: pl.DataFrame | None) -> dict[str, dict[str, int]]:
    """token -> holder -> carried micros (non-zero only)."""
    carried: dict[str, dict[str, int]] = {}
    if dust is None:
        return carried
    for token, holder, amount in dust.select("token", "holder", "carried_micros").iter_rows():
        if amount:
            carried.setdefault(token, {})[holder] = int(amount)
    return carried


posting_schema = {
    "entry_id": pl.String,
    "entry_kind": pl.String,
    "account": pl.String,
    "amount_micros": _i128,
    "model_id": pl.String,
    "policy_id": pl.String,
}


def _postings(entry: str, accounts: list[str], amounts: pl.Series) -> pl.DataFrame:
    """One holders entry's posting rows: `accounts` with their `amounts` (Int128)."""
    return pl.DataFrame({"account": accounts, "amount_micros": amounts}).select(
        entry_id=pl.lit(entry),
        entry_kind=pl.lit("holders"),
        account="account",
        amount_micros="amount_micros",
        model_id=pl.lit(None, pl.String),
        policy_id=pl.lit(None, pl.String),
    )
