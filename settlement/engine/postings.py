"""Balanced double-entry postings of an epoch, and the payables they add up to.

Signs: a positive amount is a debit, a negative one a credit. `payer:<id>` is debited what it owes,
`model:<id>` is a pass-through account (credited with its fees and inflows, debited with what it
passes on, so it ends every epoch at zero), `contributor:<id>` is credited what it earned and
`suspense` is credited what it holds.
"""

import polars as pl

from schemas.errors import InvariantViolation
from settlement.engine.accounts import contributor_prefix, dataset_prefix, payer_prefix, suspense_account
from settlement.engine.accounts import model_prefix as model_recipient_prefix
from settlement.engine.constants import amount_micros_max
from settlement.engine.exceptions import AmountOverflowError
from settlement.engine.holders import own_address_column
from settlement.engine.splits import Split

_i128 = pl.Int128
posting_columns = ["entry_id", "entry_kind", "account", "amount_micros", "model_id", "policy_id"]


def _rows(
    frame: pl.DataFrame,
    entry_id: pl.Expr,
    kind: str,
    account: pl.Expr,
    amount: pl.Expr,
    model_id: pl.Expr | None = None,
    policy_id: pl.Expr | None = None,
) -> pl.DataFrame:
    return frame.select(
        entry_id.alias("entry_id"),
        pl.lit(kind).alias("entry_kind"),
        account.alias("account"),
        amount.cast(_i128).alias("amount_micros"),
        (model_id if model_id is not None else pl.lit(None, pl.String)).alias("model_id"),
        (policy_id if policy_id is not None else pl.lit(None, pl.String)).alias("policy_id"),
    )


def _neg(expr: pl.Expr) -> pl.Expr:
    return pl.lit(0, _i128) - expr.cast(_i128)


def _model(column: str = "model_id") -> pl.Expr:
    return pl.lit(model_recipient_prefix) + pl.col(column)


def _recipient_account() -> pl.Expr:
    return (
        pl.when(pl.col("recipient").str.starts_with(model_recipient_prefix))
        .then(pl.col("recipient"))
        .when(pl.col("recipient").str.starts_with(dataset_prefix))
        .then(pl.lit(model_recipient_prefix) + pl.col("recipient"))
        .otherwise(pl.lit(contributor_prefix) + pl.col("recipient"))
    )


def billed_sums(billed: pl.LazyFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The fees billed per payer and per model, from event rows (payer, model_id, fee_micros), in one scan."""
    fees = pl.col("fee_micros").cast(_i128).sum()
    by_payer, by_model = pl.collect_all([billed.group_by("payer").agg(fees), billed.group_by("model_id").agg(fees)])
    return by_payer, by_model


def build_postings(
    epoch: int,
    billed: tuple[pl.DataFrame, pl.DataFrame],
    suspended: pl.DataFrame,
    released: pl.DataFrame,
    cancelled_held: pl.DataFrame,
    split: Split,
    extra: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Every posting of the epoch, sorted, zero rows dropped; asserts each entry balances.

    `extra` are further posting rows (posting columns, Int128 amounts): the entries passing a `holders:<token>`
    take on to the token's holders (`settlement.engine.holders`).

    `billed` is the fees billed (reversals negative) per payer and per model (`billed_sums`);
    `suspended`, `released` and `cancelled_held` are event rows (payer, model_id, fee_micros):
    newly suspended, released from suspense, and held ones cancelled by a reversal.
    """
    prefix = f"e{epoch}:"
    parts = [
        *_billing_rows(prefix, billed),
        *_suspense_rows(prefix, suspended, released, cancelled_held),
        *_cut_rows(prefix, split),
        *_pool_rows(prefix, split),
    ]
    grouped = (
        pl.concat(parts)
        .group_by("entry_id", "entry_kind", "account", "model_id", "policy_id")
        .agg(pl.col("amount_micros").sum())
        .select(posting_columns)
        .filter(pl.col("amount_micros") != 0)
        .sort(["entry_id", "account"])
    )
    # The holders' entries already hold one row per account (a million holders: grouping them cost ~4 s CPU).
    passed = None if extra is None else extra.select(posting_columns).filter(pl.col("amount_micros") != 0)
    postings = grouped if passed is None or passed.is_empty() else _with_entries(epoch, grouped, passed)
    unbalanced = postings.group_by("entry_id").agg(pl.col("amount_micros").sum()).filter(pl.col("amount_micros") != 0)
    if not unbalanced.is_empty():
        raise InvariantViolation(f"epoch {epoch}: unbalanced posting entries: {unbalanced}")
    _check_bounds(epoch, postings, "account")
    return postings.with_columns(pl.col("amount_micros").cast(pl.Int64), epoch=pl.lit(epoch, pl.Int64))


def _with_entries(epoch: int, postings: pl.DataFrame, entries: pl.DataFrame) -> pl.DataFrame:
    """`postings` (sorted by entry and account) with the rows of whole further `entries` (one row per account each)
    in their sorted place: each entry sorted by account alone and sliced in where its id sorts. Sorting a million
    holders' rows on both keys again cost about 0.6 s CPU, and checking them for a repeated account by hashing
    (entry, account) 0.4 s; here a repeat is two equal neighbours once sorted."""
    ids = sorted(entries["entry_id"].unique().to_list())
    if postings["entry_id"].is_in(ids).any():
        raise InvariantViolation(f"epoch {epoch}: a holders entry id is also another entry's: {ids}")
    pieces, start = [], 0
    for entry in ids:
        rows = entries.filter(pl.col("entry_id") == entry).sort("account")
        if rows["account"].eq(rows["account"].shift(1)).any():
            raise InvariantViolation(f"epoch {epoch}: a holders entry names an account twice")
        at = postings["entry_id"].search_sorted(entry)
        pieces += [postings.slice(start, at - start), rows]
        start = at
    return pl.concat([*pieces, postings.slice(start)])


def _billing_rows(prefix: str, billed: tuple[pl.DataFrame, pl.DataFrame]) -> list[pl.DataFrame]:
    """Payers are debited what they were billed; the billed models' pass-through accounts credited."""
    by_payer, by_model = billed
    entry = pl.lit(prefix + "billing")
    return [
        _rows(by_payer, entry, "billing", pl.lit(payer_prefix) + pl.col("payer"), pl.col("fee_micros")),
        _rows(by_model, entry, "billing", _model(), _neg(pl.col("fee_micros")), pl.col("model_id")),
    ]


def _suspense_rows(
    prefix: str, suspended: pl.DataFrame, released: pl.DataFrame, cancelled_held: pl.DataFrame
) -> list[pl.DataFrame]:
    """Fees moved into suspense from their models, and back out on release or on a cancelling reversal."""
    parts = []
    for kind, events, debit_model in (
        ("suspense", suspended, True),
        ("release", released, False),
        ("suspense_reversal", cancelled_held, False),
    ):
        sums = events.group_by("model_id").agg(pl.col("fee_micros").cast(_i128).sum())
        entry = pl.lit(prefix + kind)
        to_model = pl.col("fee_micros") if debit_model else _neg(pl.col("fee_micros"))
        to_suspense = _neg(pl.col("fee_micros")) if debit_model else pl.col("fee_micros")
        parts.append(_rows(sums, entry, kind, _model(), to_model, pl.col("model_id")))
        total = sums.select(pl.col("fee_micros").sum())
        parts.append(_rows(total, entry, kind, pl.lit(suspense_account), to_suspense))
    return parts


def _cut_rows(prefix: str, split: Split) -> list[pl.DataFrame]:
    """The compute providers' cuts: from the model's account to the provider's contributor account."""
    entry = pl.lit(prefix + "cut:") + pl.col("allocation_id")
    compute = split.cuts.filter(~pl.col("recipient").str.starts_with(model_recipient_prefix))
    recipient = pl.lit(contributor_prefix) + pl.col("recipient")
    return [
        _rows(compute, entry, "compute_cut", _model(), pl.col("amount_micros"), pl.col("model_id")),
        _rows(compute, entry, "compute_cut", recipient, _neg(pl.col("amount_micros")), pl.col("model_id")),
    ]


def _pool_rows(prefix: str, split: Split) -> list[pl.DataFrame]:
    """Each policy's pool: from the model's account to every recipient's (a contributor, or a parent model)."""
    entry = pl.lit(prefix + "pool:") + pl.col("allocation_id")
    totals = split.pools.group_by("allocation_id", "model_id", "policy_id").agg(pl.col("amount_micros").sum())
    amount = pl.col("amount_micros")
    return [
        _rows(totals, entry, "split", _model(), amount, pl.col("model_id"), pl.col("policy_id")),
        _rows(split.pools, entry, "split", _recipient_account(), _neg(amount), pl.col("model_id"), pl.col("policy_id")),
    ]


def build_payables(epoch: int, credits: pl.DataFrame, prior: pl.DataFrame, addresses: pl.DataFrame) -> pl.DataFrame:
    """Rule 9: cumulative payables never decrease; a net negative epoch becomes a receivable.

    `credits` (recipient, amount_micros; optionally `own_address_column`) are the epoch's net credits; `prior`
    (recipient, earned_micros, cumulative_micros) the latest totals; `addresses` (contributor_id,
    payout_address) the addresses in force. A recipient marked `own_address_column` (a token holder) is paid at
    its own id unless `addresses` names it.
    """
    own = pl.col(own_address_column) if own_address_column in credits.columns else pl.lit(False)
    registered = addresses.rename({"contributor_id": "recipient"}).with_columns(_registered=pl.lit(True))
    credited = _left_join_unique(credits.filter(pl.col("amount_micros") != 0), prior, "recipient")
    rows = (
        credited.with_columns(
            credited=pl.col("amount_micros").cast(_i128),
            earned=pl.col("earned_micros").fill_null(0).cast(_i128) + pl.col("amount_micros").cast(_i128),
            before=pl.col("cumulative_micros").fill_null(0).cast(_i128),
        )
        .with_columns(cumulative=pl.max_horizontal("before", "earned"))
        .pipe(_left_join_unique, registered, "recipient")
        .select(
            pl.lit(epoch, pl.Int64).alias("epoch"),
            "recipient",
            pl.col("credited").alias("credited_micros"),
            (pl.col("cumulative") - pl.col("before")).alias("amount_micros"),
            pl.col("earned").alias("earned_micros"),
            pl.col("cumulative").alias("cumulative_micros"),
            (pl.col("cumulative") - pl.col("earned")).alias("receivable_micros"),
            pl.when(pl.col("_registered").is_null() & own).then("recipient").otherwise("payout_address")
            .alias("payout_address"),
        )
        .sort("recipient")
    )
    decreased = rows.filter(pl.col("amount_micros") < 0)
    if not decreased.is_empty():
        raise InvariantViolation(f"epoch {epoch}: a cumulative payable decreased: {decreased}")
    _check_bounds(epoch, rows, "recipient")
    money = ["credited_micros", "amount_micros", "earned_micros", "cumulative_micros", "receivable_micros"]
    return rows.with_columns(pl.col(money).cast(pl.Int64))


def _left_join_unique(left: pl.DataFrame, right: pl.DataFrame, key: str) -> pl.DataFrame:
    """`left.join(right, on=key, how="left")` (rows in `left`'s order), each right row found by a binary search of
    `right` sorted by `key`: a hash join of a million holders' recipients on a million addresses cost about 0.7 s
    CPU. A hash join still when `right` holds a key twice (or none), a key is null or a column name is shared, and
    when `right` is small beside `left` (a million recipients on ten thousand addresses: 0.02 s against 0.06 s)."""
    ordered = right.sort(key)
    keys = ordered[key]
    shared = set(left.columns) & set(right.columns) - {key}
    small = keys.len() * _hash_join_ratio_min <= left.height
    hashed = small or keys.is_empty() or shared or keys.null_count() or left[key].null_count()
    if hashed or keys.eq(keys.shift(1)).any():
        return left.join(right, on=key, how="left", maintain_order="left")
    at = keys.search_sorted(left[key]).clip(upper_bound=len(keys) - 1)
    columns = [column for column in right.columns if column != key]
    picked = ordered.select(columns)[at].with_columns(_found=keys.gather(at) == left[key])
    return pl.concat(
        [left, picked.select(pl.when("_found").then(pl.col(column)) for column in columns)], how="horizontal"
    )


_hash_join_ratio_min = 32  # `left` rows per `right` row from which a hash join beats the binary searches


def _check_bounds(epoch: int, frame: pl.DataFrame, name: str) -> None:
    for column in [c for c, t in frame.schema.items() if t == _i128]:
        over = frame.filter(pl.col(column).abs() > amount_micros_max)
        if not over.is_empty():
            raise AmountOverflowError(epoch, over[name][0], int(over[column][0]))
