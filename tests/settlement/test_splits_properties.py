"""Property tests of the split engine on in-memory frames (rules 2-9 of docs/splits.md)."""

from datetime import timedelta

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import depth
from tests.settlement.split_world import billing_source, exact_credits, run_epochs, untrusted_source, worlds

fast = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("path", ["events", "rollups"])
@fast
@given(world=worlds())
def test_every_epoch_balances_and_conserves_fees(world, path):
    """Conservation: postings of each entry and epoch sum to 0; payables + suspense - receivables = fees; closed
    from the events or from the appends' rollups (settlement.rollups)."""
    receivable_before = suspense_before = 0
    for plan in run_epochs(world, path=path):
        assert plan.postings["amount_micros"].sum() == 0
        assert (
            plan.postings.group_by("entry_id").agg(pl.col("amount_micros").sum())["amount_micros"].eq(0).all()
        )
        net_fees = plan.fee_micros - plan.reversed_micros
        moved = plan.payable_micros + (plan.suspense_micros - suspense_before)
        assert moved - (plan.receivable_micros - receivable_before) == net_fees
        model_balances = plan.postings.filter(pl.col("account").str.starts_with("model:"))
        assert model_balances["amount_micros"].sum() == 0, "model accounts are pass-through"
        receivable_before, suspense_before = plan.receivable_micros, plan.suspense_micros


@fast
@given(worlds(epochs_max=2))
def test_shuffled_events_give_identical_postings_and_payables(world):
    """Determinism: closing the same epochs with the events in another order changes no row."""
    for one, two in zip(run_epochs(world), run_epochs(world, order_seed=99), strict=True):
        assert one.postings.equals(two.postings)
        assert one.payables.equals(two.payables)
        assert one.suspense_items.equals(two.suspense_items)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds(epochs_max=1))
def test_each_recipient_is_within_its_allocation_count_of_the_exact_share(world):
    """Error bound: |amount - exact share| <= allocations feeding it, against a `fractions` reference."""
    world.reversals = []
    for policy in world.policies:
        policy["known_snapshot"] = 1
    for model in world.models:
        model["known_snapshot"] = 1
    (plan,) = run_epochs(world)
    exact, feeding = exact_credits(world, world.events, snapshot=1)
    credited = dict(zip(plan.payables["recipient"], plan.payables["credited_micros"], strict=True))
    for recipient in set(exact) | set(credited):
        error = abs(credited.get(recipient, 0) - exact.get(recipient, 0))
        assert error <= len(feeding.get(recipient, ())), (recipient, error, exact.get(recipient))
    assert sum(credited.values()) + plan.suspended_micros == plan.fee_micros


@fast
@given(worlds(events_max=30, epochs_max=3))
def test_cumulative_payables_never_decrease_even_with_reversals(world):
    """Monotonic claims: over epochs with reversals, each recipient's cumulative payable never goes down."""
    latest: dict[str, int] = {}
    for plan in run_epochs(world):
        for row in plan.payables.iter_rows(named=True):
            assert row["cumulative_micros"] >= latest.get(row["recipient"], 0)
            assert row["receivable_micros"] >= 0
            assert row["cumulative_micros"] - row["receivable_micros"] == row["earned_micros"]
            latest[row["recipient"]] = row["cumulative_micros"]


@fast
@given(worlds(events_max=20, epochs_max=3))
def test_reversals_are_taken_back_once_and_bad_ones_are_dead_letters(world):
    """Rule 7: a reversal settles once; unknown or repeated targets, and reversals from a source neither the
    original's nor trusted (`reversal_sources`), are dead letters; totals net to zero."""
    plans = run_epochs(world)
    outcomes = pl.concat([p.reversals for p in plans])
    settled = outcomes.filter(pl.col("outcome") != "dead_letter")
    assert settled.select("original_source", "original_event_id").is_unique().all()
    known = {(e["source"], e["event_id"]): e for e in world.events}
    arrival = {r["event_id"]: r["arrival"] for r in world.reversals}
    for row in outcomes.iter_rows(named=True):
        target = known.get((row["original_source"], row["original_event_id"]))
        if row["outcome"] != "dead_letter":
            assert target is not None and row["fee_micros"] == -target["fee_micros"]
            assert row["source"] in (row["original_source"], billing_source)
        elif target is not None and row["source"] == untrusted_source and target["arrival"] <= arrival[row["event_id"]]:
            assert row["reason"].startswith("unauthorized source")
    # Everything billed, minus reversals, is either payable (net of receivables) or held in suspense.
    last = plans[-1]
    billed = sum(p.fee_micros - p.reversed_micros for p in plans)
    assert sum(p.payable_micros for p in plans) + last.suspense_micros - last.receivable_micros == billed


@settings(max_examples=depth(25, 200), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds(events_max=12, epochs_min=2, epochs_max=3, reversals_min=1), st.data())
def test_a_reversal_id_is_applied_once_whatever_its_copies_and_their_order(world, data):
    """Copies of reversal ids (resent with another event time, naming any event, arriving in the same epoch or a
    later one; ingest stores them) never apply one (source, id) twice over the epochs, and the plans do not depend on
    the order the copies arrive in within an epoch (the ledger's file order)."""
    named = {(r["original_source"] or r["source"], r["original_event_id"]) for r in world.reversals}
    for number, reversal in enumerate(data.draw(st.lists(st.sampled_from(world.reversals), min_size=1, max_size=4))):
        # Another event of the source the reversal names (as authorized as the reversal was), none reverses yet.
        source = reversal["original_source"] or reversal["source"]
        others = [e for e in world.events if e["source"] == source and (source, e["event_id"]) not in named]
        target = data.draw(st.sampled_from(others or world.events))
        world.reversals.append(
            {
                **reversal,
                "original_event_id": target["event_id"],
                "event_time": reversal["event_time"] + timedelta(hours=1 + number),
                "arrival": data.draw(st.integers(min(reversal["arrival"] + 1, world.epochs), world.epochs)),
            }
        )
    plans = run_epochs(world, reversal_order_seed=1)
    applied = pl.concat([p.reversals for p in plans]).filter(pl.col("outcome") != "dead_letter")
    assert applied.select("source", "event_id").is_unique().all()
    for plan, again in zip(plans, run_epochs(world, reversal_order_seed=2), strict=True):
        assert plan.payables.equals(again.payables)
        assert plan.reversals.sort("source", "event_id").equals(again.reversals.sort("source", "event_id"))


@fast
@given(worlds(events_max=20, epochs_max=3))
def test_suspense_is_released_once_a_policy_covers_it(world):
    """Rule 6: events held for a missing policy are released by the first epoch whose registry covers them."""
    plans = run_epochs(world)
    held: set[tuple[str, str]] = set()
    for plan in plans:
        released = set(plan.suspense_releases.select("source", "event_id").iter_rows())
        assert released <= held, "only held events are released"
        held = (held - released) | set(plan.suspense_items.select("source", "event_id").iter_rows())
    assert plans[-1].suspense_micros == sum(
        e["fee_micros"] for e in world.events if (e["source"], e["event_id"]) in held
    )
