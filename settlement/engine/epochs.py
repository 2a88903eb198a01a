"""Closing one epoch, as a pure function of what the ledger holds (rules 1, 6, 7 and 9).

`plan_epoch` takes the epoch's new events, the registry as known at the closing snapshot and the
settlement's own state, and returns every row the epoch appends. `settlement.closing.close_epoch`
reads those inputs from the ledger (`settlement.ledger_io`) and writes the plan in one transaction.
"""

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import polars as pl

from schemas.errors import require
from settlement.engine import reversals as rev
from settlement.engine.figures import EpochFigures
from settlement.engine.holders import HolderWeightSource, dust_schema, pass_to_holders
from settlement.engine.policies import Resolution, resolve
from settlement.engine.postings import billed_sums, build_payables, build_postings
from settlement.engine.splits import Routed, Split, event_columns, event_count, event_key, route, split

_i128 = pl.Int128


@dataclass
class PriorState:
    """What earlier epochs left: open suspense, reversals done, releases and cumulative payables."""

    epoch: int = 0
    closing_snapshot: int = 0
    epoch_closings: dict[int, int] = field(default_factory=dict)
    held: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=held_schema))
    reversed_ids: set[str] = field(default_factory=set)  # keys (splits.key_of) of reversed events
    # Keys (splits.key_of of the reversal's own source and id) of the reversals applied, with the epoch of each.
    applied_reversals: dict[str, int] = field(default_factory=dict)
    released: dict[str, int] = field(default_factory=dict)  # event key -> epoch it was released in
    payables: pl.DataFrame = field(
        default_factory=lambda: pl.DataFrame(
            schema={"recipient": pl.String, "earned_micros": pl.Int64, "cumulative_micros": pl.Int64}
        )
    )
    # Token holders' parts carried forward below `holder_dust_units_min` (token, holder, carried_micros; non-zero).
    holder_dust: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=dust_schema))


@dataclass
class EpochInputs:
    """The ledger as seen by the epoch closing at `closing_snapshot`."""

    closing_snapshot: int
    new_events: pl.LazyFrame  # event_columns, deduplicated by (source, event id)
    reversals: pl.DataFrame  # event_id, source, event_time, original_event_id, original_source (may be null)
    originals: pl.DataFrame  # event_columns + arrival_snapshot of the metered events reversals name
    models: pl.DataFrame  # model_registered rows + known_snapshot
    policies: pl.DataFrame  # split_policy_set rows + known_snapshot
    addresses: pl.DataFrame  # contributor_id, payout_address (in force at the closing snapshot)
    # Sources that may reverse any source's event (besides the event's own source): RegistryRules.reversal_sources.
    reversal_sources: tuple[str, ...] = ()
    # Per token a `holders:<token>` recipient names: each holder's time-weighted balance over the epoch's blocks
    # (or a function giving them for the tokens the epoch credits: `settlement.engine.holders`).
    holder_weights: HolderWeightSource | None = None
    # Closed from the appends' rollups (settlement.rollups): (model, hour) cells read from rollups, from events.
    rollup_cells: tuple[int, int] | None = None
    # With rollup rows (which name no payer) in new_events: the new events' fees per payer (payer, fee_micros).
    payer_fees: pl.DataFrame | None = None
    # A holder's accumulated part below this many micros is carried forward, not credited (0: never).
    holder_dust_units_min: int = 0
    # The registry resolved at `closing_snapshot` (`policies.resolve` of `models` and `policies`), when the reader
    # already resolved it (the rollup path does): not resolved again.
    resolution: Resolution | None = None


@dataclass(frozen=True)
class EpochPlan(EpochFigures):
    """Every row one epoch appends, and the figures of its summary (`EpochFigures`)."""

    postings: pl.DataFrame
    payables: pl.DataFrame
    suspense_items: pl.DataFrame
    suspense_releases: pl.DataFrame
    reversals: pl.DataFrame  # classified, with reasons
    problems: list[str]
    # The holders whose carried dust changed: token, holder, carried_micros after the epoch (0: paid out).
    holder_dust: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=dust_schema))

    @property
    def noop(self) -> bool:
        return self.event_count == 0 and self.reversal_count == 0 and self.suspense_releases.is_empty()


held_schema = {
    **dict.fromkeys(event_columns, pl.String),
    "event_time": pl.Datetime("us", "UTC"),
    "fee_micros": pl.Int64,
    "epoch": pl.Int64,
}


def _sum(frame: pl.DataFrame, column: str = "fee_micros") -> int:
    return int(frame[column].cast(_i128).sum() or 0) if frame.height else 0


def classify_reversals(inputs: EpochInputs, prior: PriorState) -> pl.DataFrame:
    """The epoch's reversals, each with its outcome (`reversals.classify`), as `plan_epoch` applies them."""
    return rev.classify(
        inputs.reversals,
        inputs.originals,
        set(prior.held.select(event_key())["event_key"].to_list()) if prior.held.height else set(),
        prior.reversed_ids,
        prior.released,
        prior.epoch_closings,
        prior.closing_snapshot,
        inputs.reversal_sources,
        prior.applied_reversals,
    )


def plan_epoch(inputs: EpochInputs, prior: PriorState) -> EpochPlan:
    """Compute epoch `prior.epoch + 1`: splits, suspense, reversals, postings and payables."""
    epoch = prior.epoch + 1
    closing = inputs.closing_snapshot
    require(
        closing >= prior.closing_snapshot,
        f"epoch {epoch} closes at snapshot {closing}, not before epoch {prior.epoch}'s {prior.closing_snapshot}",
    )
    resolutions: dict[int, Resolution] = {
        closing: inputs.resolution or resolve(inputs.models, inputs.policies, closing)
    }
    classified = classify_reversals(inputs, prior)
    valid = classified.filter(pl.col("outcome") != rev.dead_letter)
    moves = _route(inputs, prior, valid, resolutions)
    # Aggregated as it is scanned: the epoch's events are never all held in memory at once. The scan runs on a thread
    # beside the holders' allocation (Python integers, one core): polars' scan releases the GIL.
    billed_rows = pl.concat(
        [
            inputs.new_events.select("payer", "model_id", "fee_micros"),
            valid.select("payer", "model_id", "fee_micros").lazy(),
        ]
    )
    with ThreadPoolExecutor(1) as pool:
        billed_scan = pool.submit(billed_sums, billed_rows)
        credits, holder_postings, holder_dust = pass_to_holders(
            epoch, moves.split.credits, inputs.holder_weights, prior.holder_dust, inputs.holder_dust_units_min
        )
        billed = billed_scan.result()
    if inputs.payer_fees is not None:  # rollup rows name no payer: the payers' sums come with them
        payers = pl.concat(
            [inputs.payer_fees.lazy(), valid.select("payer", "fee_micros").lazy()], how="vertical_relaxed"
        )
        billed = (payers.group_by("payer").agg(pl.col("fee_micros").cast(pl.Int128).sum()).collect(), billed[1])
    postings = build_postings(
        epoch, billed, moves.suspended, moves.released, moves.cancelled_held, moves.split, holder_postings
    )
    payables = build_payables(epoch, credits, prior.payables, inputs.addresses)
    totals = _checked_totals(epoch, inputs, prior, valid, moves, postings, payables, _dust_change(prior, holder_dust))
    problems = [problem for resolution in resolutions.values() for problem in resolution.problems]
    return EpochPlan(
        epoch=epoch,
        previous_snapshot=prior.closing_snapshot,
        closing_snapshot=closing,
        reversal_count=classified.height,
        dead_letter_count=classified.height - valid.height,
        group_count=moves.split.cuts["allocation_id"].n_unique() + moves.split.pools["allocation_id"].n_unique(),
        postings=postings,
        payables=payables,
        suspense_items=_suspense_items(epoch, moves.suspended),
        suspense_releases=_suspense_releases(epoch, moves.released, moves.cancelled_held),
        reversals=classified,
        problems=sorted(set(problems)),
        holder_dust=holder_dust,
        **totals,
    )


def _dust_change(prior: PriorState, changed: pl.DataFrame) -> int:
    """How much more dust the holders carry after the epoch than before (`changed`: their rows after it)."""
    if changed.is_empty():
        return 0
    before = changed.select("token", "holder").join(prior.holder_dust, on=["token", "holder"], how="left")
    return _sum(changed, "carried_micros") - _sum(before.with_columns(pl.col("carried_micros").fill_null(0)),
                                                  "carried_micros")


@dataclass(frozen=True)
class _Moves:
    """Where the epoch's events went: split (new, released and taken-back ones), or into or out of suspense."""

    split: Split
    suspended: pl.DataFrame  # new events whose route is incomplete
    released: pl.DataFrame  # held events that now route completely
    cancelled_held: pl.DataFrame  # held events a reversal cancelled


def _route(
    inputs: EpochInputs, prior: PriorState, valid: pl.DataFrame, resolutions: dict[int, Resolution]
) -> _Moves:
    """Route the new and held events with the registry at closing, and the taken-back ones with the registry
    as of the snapshot each was settled at (added to `resolutions`); split them all together."""
    closing = inputs.closing_snapshot
    cancelled_keys = valid.filter(pl.col("outcome") == rev.cancelled).select(
        event_key("original_source", "original_event_id")
    )["event_key"]
    # A weighted rollup row has no event id (null key): never a cancelled event (settlement.rollups reads those raw).
    new_kept = inputs.new_events.filter(~event_key().is_in(cancelled_keys.implode()).fill_null(False))
    held = prior.held.filter(~event_key().is_in(cancelled_keys.implode()))
    cancelled_held = prior.held.filter(event_key().is_in(cancelled_keys.implode()))

    routed_new = route(new_kept, resolutions[closing])
    routed_held = route(held.select(event_columns).lazy(), resolutions[closing])
    still_held = routed_held.incomplete.select(event_key())["event_key"]
    released = held.filter(~event_key().is_in(still_held.implode()))
    groups = [routed_new.groups, routed_held.groups]
    taken = valid.filter(pl.col("outcome") == rev.taken_back)
    for snapshot in sorted(set(taken["settled_snapshot"].to_list())):
        if snapshot not in resolutions:
            resolutions[snapshot] = resolve(inputs.models, inputs.policies, snapshot)
        routed: Routed = route(
            taken.filter(pl.col("settled_snapshot") == snapshot).select(event_columns).lazy(),
            resolutions[snapshot],
        )
        require(routed.incomplete.is_empty(), f"settled events still route completely as of snapshot {snapshot}")
        groups.append(routed.groups)
    merged = _merge_resolutions(list(resolutions.values()))
    return _Moves(split(pl.concat(groups), merged), routed_new.incomplete, released, cancelled_held)


def _receivable(payables: pl.DataFrame) -> int:
    """What the recipients of `payables` owe back: cumulative less earned."""
    return _sum(
        payables.with_columns(owed=pl.col("cumulative_micros").cast(_i128) - pl.col("earned_micros").cast(_i128)),
        "owed",
    )


def _checked_totals(
    epoch: int,
    inputs: EpochInputs,
    prior: PriorState,
    valid: pl.DataFrame,
    moves: _Moves,
    postings: pl.DataFrame,
    payables: pl.DataFrame,
    dust_change: int = 0,
) -> dict[str, int]:
    """The epoch's money figures, after checking conservation and that the postings sum to zero."""
    prior_receivable = _receivable(prior.payables)
    # An anti join is the same with keys repeated on the right: no `unique()` first (0.2 s at a million holders).
    untouched = prior.payables.join(payables.select("recipient"), on="recipient", how="anti")
    receivable = _sum(payables, "receivable_micros") + _receivable(untouched)
    new_fees = _sum(inputs.new_events.select("fee_micros").collect())
    suspended_micros, released_micros = _sum(moves.suspended), _sum(moves.released)
    suspense_before = _sum(prior.held)
    suspense_after = suspense_before + suspended_micros - released_micros - _sum(moves.cancelled_held)
    payable = _sum(payables, "amount_micros")
    reversed_micros = -_sum(valid)
    # Conservation: what the epoch billed is what it made payable, plus what suspense and the holders' dust now
    # hold more, minus what recipients now owe back more.
    accounted_micros = payable + (suspense_after - suspense_before) + dust_change - (receivable - prior_receivable)
    require(
        accounted_micros == new_fees - reversed_micros,
        f"conservation in epoch {epoch}: payable {payable} + suspense change {suspense_after - suspense_before} "
        f"+ holder dust change {dust_change} - receivables change {receivable - prior_receivable} "
        f"= {accounted_micros} micros, but fees "
        f"{new_fees} - reversed {reversed_micros} = {new_fees - reversed_micros}",
    )
    postings_micros = _sum(postings, "amount_micros")
    require(postings_micros == 0, f"the postings of epoch {epoch} sum to {postings_micros} micros, not 0")
    return {
        "event_count": inputs.new_events.select(event_count(inputs.new_events)).collect().item(),
        "fee_micros": new_fees,
        "reversed_micros": reversed_micros,
        "suspended_micros": suspended_micros,
        "released_micros": released_micros,
        "suspense_micros": suspense_after,
        "payable_micros": payable,
        "receivable_micros": receivable,
    }


def _suspense_items(epoch: int, suspended: pl.DataFrame) -> pl.DataFrame:
    return (
        suspended.with_columns(epoch=pl.lit(epoch, pl.Int64))
        .select("epoch", "event_id", "source", "event_time", "model_id", "payer", "compute_provider", "fee_micros")
        .sort(["event_id", "source"])
    )


def _suspense_releases(epoch: int, released: pl.DataFrame, cancelled_held: pl.DataFrame) -> pl.DataFrame:
    epoch_column = pl.lit(epoch, pl.Int64).alias("epoch")
    return pl.concat(
        [
            released.select(epoch_column, "event_id", "source", pl.lit(rev.ReleaseOutcome.split).alias("outcome")),
            cancelled_held.select(
                epoch_column, "event_id", "source", pl.lit(rev.ReleaseOutcome.reversed).alias("outcome")
            ),
        ]
    ).sort(["event_id", "source"])


def advance(prior: PriorState, plan: EpochPlan) -> PriorState:
    """The state after `plan` is written: what the next epoch sees (used by in-memory drivers)."""
    released = dict(prior.released)
    split = plan.suspense_releases.filter(pl.col("outcome") == rev.ReleaseOutcome.split)
    split_keys = split.select(event_key())["event_key"]
    released.update(dict.fromkeys(split_keys.to_list(), plan.epoch))
    gone = plan.suspense_releases.select(event_key())["event_key"].implode()
    held = (
        pl.concat(
            [
                prior.held.filter(~event_key().is_in(gone)),
                plan.suspense_items.select(*event_columns, "epoch"),
            ]
        )
        if plan.suspense_items.height
        else prior.held.filter(~event_key().is_in(gone))
    )
    payables = pl.concat(
        [
            prior.payables.filter(~pl.col("recipient").is_in(plan.payables["recipient"].implode())),
            plan.payables.select("recipient", "earned_micros", "cumulative_micros"),
        ]
    ).sort("recipient")
    reversed_ids = prior.reversed_ids | set(
        plan.reversals.filter(pl.col("outcome") != rev.dead_letter)
        .select(event_key("original_source", "original_event_id"))["event_key"]
        .to_list()
    )
    applied = plan.reversals.filter(pl.col("outcome") != rev.dead_letter).select(event_key())["event_key"]
    applied_reversals = {**prior.applied_reversals, **dict.fromkeys(applied.to_list(), plan.epoch)}
    keys = ["token", "holder"]
    dust = (
        pl.concat([prior.holder_dust.join(plan.holder_dust, on=keys, how="anti"), plan.holder_dust])
        .filter(pl.col("carried_micros") != 0)
        .sort(keys)
    )
    return PriorState(
        epoch=plan.epoch,
        closing_snapshot=plan.closing_snapshot,
        epoch_closings={**prior.epoch_closings, plan.epoch: plan.closing_snapshot},
        held=held.select(list(held_schema)),
        reversed_ids=reversed_ids,
        applied_reversals=applied_reversals,
        released=released,
        payables=payables,
        holder_dust=dust,
    )


def _merge_resolutions(resolutions: list[Resolution]) -> Resolution:
    """Pools of several snapshots' registries: a pool id names the same policies in every one."""
    return Resolution(
        pl.concat([r.segments for r in resolutions]),
        pl.concat([r.pools for r in resolutions]).unique("pool_id").sort("pool_id"),
        pl.concat([r.pool_shares for r in resolutions])
        .unique(["pool_id", "recipient"])
        .sort(["pool_id", "recipient"]),
    )
