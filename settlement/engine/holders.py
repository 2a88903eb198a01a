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

from collections.abc import Callable, Sequence

import polars as pl

from settlement.engine.accounts import contributor_prefix, holder_dust_prefix, holders_prefix
from settlement.engine.allocation import allocate_by_weight_columns, allocate_by_weight_frame

_i128 = pl.Int128
HolderWeights = dict[str, Sequence[tuple[str, int]]]  # token -> [(holder address, time-weighted balance)], by holder
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
# The credits' column marking a recipient credited a holder's part: paid at its own address (`build_payables`).
own_address_column = "own_address"


def pass_to_holders(
    epoch: int,
    credits: pl.DataFrame,
    source: HolderWeightSource | None,
    dust: pl.DataFrame | None = None,
    dust_units_min: int = 0,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """The epoch's credits with each weighted `holders:<token>` take replaced by its holders' parts, the
    postings of those entries (posting columns, amounts Int128), and the holders' dust rows whose carried amount
    changed (`dust_schema`). The credits are (recipient, amount_micros Int128, `own_address_column`), sorted by
    recipient: a recipient credited a holder's part is paid at its own address unless the registry names one.

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
        paid, changed = _paid_and_changed(take, holders, carried.get(token, {}), dust_units_min)
        moved = sum(after - carried.get(token, {}).get(holder, 0) for holder, after in changed)
        # Columns, not a dict or tuple per holder: at a million holders they cost seconds.
        debit = pl.DataFrame(
            {"account": [contributor_prefix + recipient], "amount_micros": pl.Series([take], dtype=_i128)}
        )
        credit = paid.select(  # negated as 0 - x: polars has no Int128 negation
            account=pl.lit(contributor_prefix) + pl.col("recipient"),
            amount_micros=pl.lit(0, _i128) - pl.col("amount_micros"),
        )
        dust_credit = pl.DataFrame(
            {
                "account": [holder_dust_prefix + token] if moved else [],
                "amount_micros": pl.Series([-moved] if moved else [], dtype=_i128),
            }
        )
        postings.append(_postings(entry, pl.concat([debit, credit, dust_credit])))
        received.append(paid)
        dust_rows.append(
            pl.DataFrame(
                {"token": token, "holder": [h for h, _ in changed], "carried_micros": [a for _, a in changed]},
                schema=dust_schema,
            )
        )
    kept = credits.filter(~pl.col("recipient").is_in(sorted(passed))).select(
        "recipient", pl.col("amount_micros").cast(_i128), pl.lit(False).alias(own_address_column)
    )
    received_frame = pl.concat([pl.DataFrame(schema={"recipient": pl.String, "amount_micros": _i128}), *received])
    own = received_frame.with_columns(pl.lit(True).alias(own_address_column))
    merged = _summed_by_recipient(pl.concat([kept, own]))
    changed_dust = pl.concat([pl.DataFrame(schema=dust_schema), *dust_rows]).sort("token", "holder")
    return merged, pl.concat([pl.DataFrame(schema=posting_schema), *postings]), changed_dust


def _summed_by_recipient(rows: pl.DataFrame) -> pl.DataFrame:
    """(recipient, amount_micros, `own_address_column`) summed per recipient (own address if any row's), sorted by
    recipient. Sorted first, then summed over runs of equal recipients: a hash group-by of a million holders' rows
    (Int128 sums) and the sort of its output in random order cost about 2 s CPU, the sort of rows mostly in order
    (the holders' are) and the run sums a tenth of it."""
    ordered = rows.sort("recipient", maintain_order=True)
    if ordered.select(_first_of_run("recipient").all()).item():  # one row per recipient: nothing to sum
        return ordered
    return (
        ordered.with_columns(pl.col("recipient").set_sorted())
        .group_by("recipient", maintain_order=True)
        .agg(pl.col("amount_micros").sum(), pl.col(own_address_column).any())
    )


def _first_of_run(column: str) -> pl.Expr:
    """Whether each row of a frame sorted by `column` starts a run of equal values (the first row does)."""
    return pl.col(column).ne_missing(pl.col(column).shift(1)) | (pl.int_range(pl.len()) == 0)


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


def _paid_and_changed(
    take: int, weights: Sequence[tuple[str, int]], carried_in: dict[str, int], dust_units_min: int
) -> tuple[pl.DataFrame, list[tuple[str, int]]]:
    """`take` allocated over one token's `weights`, through the dust rule (`carry_dust`): the holders credited
    (recipient, amount_micros Int128, non-zero) and those whose carried amount changed (holder, carried after)."""
    if carried_in or dust_units_min > 0:
        holders, amounts = allocate_by_weight_columns(take, weights)
        paid, changed = carry_dust(list(zip(holders, amounts, strict=True)), carried_in, dust_units_min)
        frame = pl.DataFrame(
            {
                "recipient": pl.Series([holder for holder, _ in paid], dtype=pl.String),
                "amount_micros": pl.Series([amount for _, amount in paid], dtype=_i128),
            }
        )
    else:  # carry_dust's case of nothing carried in or out, by column: every non-zero part is paid
        frame, changed = allocate_by_weight_frame(take, weights), []
    return frame.filter(pl.col("amount_micros") != 0), changed


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


def _postings(entry: str, amounts: pl.DataFrame) -> pl.DataFrame:
    """One holders entry's posting rows from its (account, amount_micros Int128) rows."""
    return amounts.select(
        entry_id=pl.lit(entry),
        entry_kind=pl.lit("holders"),
        account="account",
        amount_micros="amount_micros",
        model_id=pl.lit(None, pl.String),
        policy_id=pl.lit(None, pl.String),
    )
