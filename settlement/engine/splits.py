"""The split engine: an epoch's fees to compute providers, contributors, parent models and suspense.

Pure functions on polars frames, no ledger access, so property tests run on in-memory frames:

1. route every fee to the pool of its model's route (`policies.resolve`), or to suspense;
2. sum fees per (model, route, compute provider) and cut `compute_share_ppm` for the provider;
3. sum the model's revenue per pool (direct revenue plus what children's pools send up) and
   allocate it over the policy's shares, children before parents, so a parent's pool is complete
   when it is allocated. Every allocation is `allocation.allocate` (exact largest remainder).

Events are routed without sorting them, in one pass that sums fees per (model, provider) with
their time span: a model whose route does not change within that span (almost all of them) is
done with it; only the events of a model whose policy changes inside the span, or that has no
complete route, are read again and joined to its segments one by one.
"""

from dataclasses import dataclass

import polars as pl

from schemas.errors import require
from schemas.fields import model_recipient_prefix
from settlement.engine.allocation import allocate
from settlement.engine.constants import ppm_total
from settlement.engine.policies import Resolution

_i128 = pl.Int128
event_columns = ["event_id", "source", "event_time", "model_id", "payer", "compute_provider", "fee_micros"]
# A further column of weighted event rows: how many events the row stands for (a rollup row of settlement.rollups,
# whose fee is their sum and event time their latest). Rows without it are one event each.
event_count_column = "event_count"


def event_count(events: pl.LazyFrame | pl.DataFrame) -> pl.Expr:
    """How many events the rows of `events` stand for (the sum of their weights, or their number)."""
    names = events.collect_schema().names()
    return pl.col(event_count_column).sum() if event_count_column in names else pl.len()


# An event is identified by its (source, id), as CloudEvents defines: two producers may both use id `42`.
# Sources and ids are printable (schemas.fields: no control character), so the unit separator joins
# them into one unambiguous key for sets and filters.
key_separator = "\x1f"


def event_key(source: str | pl.Expr = "source", event_id: str = "event_id") -> pl.Expr:
    """The key of each row's event, from its source and id columns."""
    source_expr = pl.col(source) if isinstance(source, str) else source
    return pl.concat_str([source_expr, pl.col(event_id)], separator=key_separator).alias("event_key")


def key_of(source: str, event_id: str) -> str:
    """The key of one event, as `event_key` computes it."""
    return f"{source}{key_separator}{event_id}"


@dataclass
class Routed:
    """Fees summed per (model, pool, provider), and the event rows whose route is incomplete."""

    groups: pl.DataFrame  # model_id, pool_id, compute_provider, compute_share_ppm, fee_micros (i128), events
    incomplete: pl.DataFrame  # event_columns of events that go (or stay) in suspense


@dataclass
class Split:
    """Every allocation of one epoch, ready to become postings."""

    cuts: pl.DataFrame  # allocation_id, model_id, pool_id, compute_provider, recipient, amount_micros
    pools: (
        pl.DataFrame
    )  # allocation_id, pool_id, model_id, policy_id, recipient, target_pool_id, amount_micros
    credits: pl.DataFrame  # recipient (contributor id), amount_micros (i128): what the epoch credits them


def route(events: pl.LazyFrame, resolution: Resolution) -> Routed:
    """Match fees to their route by model and event time, and sum them per group.

    One pass sums every (model, provider) and finds its time span; the models whose route is one
    complete segment over that span (almost all) are done with it. Only the events of models whose
    route changes within the span, or is incomplete, are read again.
    """
    sums = [
        pl.col("fee_micros").cast(_i128).sum().alias("fee_micros"),
        event_count(events).cast(pl.Int64).alias("events"),
    ]
    provider_sums = (
        events.group_by("model_id", "compute_provider")
        .agg(*sums, pl.col("event_time").min().alias("first_time"), pl.col("event_time").max().alias("last_time"))
        .collect()
    )
    span = provider_sums.group_by("model_id").agg(pl.col("first_time").min(), pl.col("last_time").max())
    segments = resolution.segments.with_columns(
        segment_end=pl.col("segment_start").shift(-1).over("model_id")
    )
    overlapping = segments.join(span, on="model_id").filter(
        (pl.col("segment_start") <= pl.col("last_time"))
        & (pl.col("segment_end").is_null() | (pl.col("segment_end") > pl.col("first_time")))
    )
    counts = overlapping.group_by("model_id").len()
    single = overlapping.join(counts.filter(pl.col("len") == 1), on="model_id").select(
        "model_id", "pool_id", "compute_share_ppm", "complete"
    )
    changing = counts.filter(pl.col("len") > 1)["model_id"]
    steady = single.filter("complete")["model_id"]
    held = span["model_id"].filter(
        ~span["model_id"].is_in(steady.to_list()) & ~span["model_id"].is_in(changing.to_list())
    )

    keys = ["model_id", "pool_id", "compute_provider", "compute_share_ppm"]
    steady_groups = (
        provider_sums.filter(pl.col("model_id").is_in(steady.implode()))
        .join(single, on="model_id")
        .select(*keys, "fee_micros", "events")
    )
    changing_groups = pl.DataFrame(schema=steady_groups.schema)
    incomplete = pl.DataFrame(schema=events.collect_schema()).select(event_columns)
    if changing.len() or held.len():
        changing_rows = (
            events.filter(pl.col("model_id").is_in(changing.implode()))
            .join(
                overlapping.lazy().select(
                    "model_id", "segment_start", "segment_end", "pool_id", "compute_share_ppm", "complete"
                ),
                on="model_id",
            )
            .filter(
                (pl.col("event_time") >= pl.col("segment_start"))
                & (pl.col("segment_end").is_null() | (pl.col("event_time") < pl.col("segment_end")))
            )
        )
        incomplete_rows = pl.concat(
            [
                events.filter(pl.col("model_id").is_in(held.implode())).select(event_columns),
                changing_rows.filter(~pl.col("complete")).select(event_columns),
            ]
        )
        changing_groups, incomplete = pl.collect_all(
            [changing_rows.filter("complete").group_by(keys).agg(sums), incomplete_rows]
        )
    groups = pl.concat([steady_groups, changing_groups.select(steady_groups.columns)]).sort(
        ["model_id", "pool_id", "compute_provider"]
    )
    return Routed(groups, incomplete.sort("event_id"))


def split(groups: pl.DataFrame, resolution: Resolution) -> Split:
    """Allocate summed fees: compute cuts per group, then every pool, children before parents."""
    groups = groups.group_by("model_id", "pool_id", "compute_provider", "compute_share_ppm").agg(
        pl.col("fee_micros").sum()
    )
    cut_parts = pl.concat(
        [
            groups.with_columns(recipient=pl.col("compute_provider"), share_ppm=pl.col("compute_share_ppm")),
            groups.with_columns(
                recipient=pl.lit(model_recipient_prefix) + pl.col("model_id"),
                share_ppm=ppm_total - pl.col("compute_share_ppm"),
            ),
        ]
    ).with_columns(
        allocation_id=pl.concat_str("model_id", "pool_id", "compute_provider", separator="|"),
        total_micros=pl.col("fee_micros"),
    )
    cuts = allocate(cut_parts).select(
        "allocation_id", "model_id", "pool_id", "compute_provider", "recipient", "amount_micros"
    )
    revenue = (
        cuts.filter(pl.col("recipient").str.starts_with(model_recipient_prefix))
        .group_by("pool_id")
        .agg(pl.col("amount_micros").sum())
    )
    shares = resolution.pool_shares.join(resolution.pools, on="pool_id")
    allocated: list[pl.DataFrame] = []
    inflow = revenue
    for level in sorted(set(resolution.pools["level"].to_list()), reverse=True):
        totals = inflow.filter(
            pl.col("pool_id").is_in(resolution.pools.filter(pl.col("level") == level)["pool_id"].implode())
        )
        totals = totals.group_by("pool_id").agg(pl.col("amount_micros").sum().alias("total_micros"))
        parts = shares.join(totals, on="pool_id").with_columns(allocation_id=pl.col("pool_id"))
        done = allocate(parts).select(
            "allocation_id",
            "pool_id",
            "model_id",
            "policy_id",
            "recipient",
            "target_pool_id",
            "amount_micros",
        )
        allocated.append(done)
        upstream = done.filter(pl.col("target_pool_id").is_not_null()).select(
            pl.col("target_pool_id").alias("pool_id"), "amount_micros"
        )
        inflow = pl.concat([inflow, upstream])
    pools = pl.concat(allocated) if allocated else _empty_pools()
    require(pools["pool_id"].n_unique() == pools.select("pool_id").unique().height, "pool ids are unique")
    contributor_parts = pl.concat(
        [
            cuts.filter(~pl.col("recipient").str.starts_with(model_recipient_prefix)).select(
                "recipient", "amount_micros"
            ),
            pools.filter(pl.col("target_pool_id").is_null()).select("recipient", "amount_micros"),
        ]
    )
    credits = contributor_parts.group_by("recipient").agg(pl.col("amount_micros").sum()).sort("recipient")
    moved = int(groups["fee_micros"].sum() or 0)
    credited = int(credits["amount_micros"].sum() or 0)
    require(credited == moved, f"the split credits {credited} micros of {moved} split: it created or lost money")
    return Split(cuts, pools, credits)


def _empty_pools() -> pl.DataFrame:
    return pl.DataFrame(
        schema={
            "allocation_id": pl.String,
            "pool_id": pl.String,
            "model_id": pl.String,
            "policy_id": pl.String,
            "recipient": pl.String,
            "target_pool_id": pl.String,
            "amount_micros": _i128,
        }
    )
