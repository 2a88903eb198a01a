"""Closing from the appends' rollups (settlement.rollups) gives exactly what closing from the events gives."""

from datetime import timedelta

import polars as pl
from hypothesis import HealthCheck, given, settings

from tests.settlement.split_world import World, run_epochs, start, worlds

fast = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _same_plans(world) -> None:
    for events, rollups in zip(run_epochs(world), run_epochs(world, path="rollups"), strict=True):
        assert _rows(rollups) == _rows(events)


def _rows(plan) -> dict:
    return {
        name: value.to_dicts() if isinstance(value, pl.DataFrame) else value for name, value in vars(plan).items()
    }


@fast
@given(worlds(mid_hour=True))
def test_rollups_close_every_epoch_as_the_events_do(world):
    """Generated registries (policies taking effect mid-hour and on the hour), suspense, releases and reversals over
    several epochs: every row and figure of every epoch is the same from rollups as from the events."""
    _same_plans(world)


def _policy(number: int, effective_from, recipient: str) -> dict:
    return {
        "event_id": f"pol-m0-{number}",
        "model_id": "m0",
        "effective_from": effective_from,
        "event_time": start,
        "compute_share_ppm": 100_000,
        "shares": [{"recipient": recipient, "share_ppm": 1_000_000}],
        "known_snapshot": 1,
    }


def _event(number: int, when, fee_micros: int) -> dict:
    return {
        "event_id": f"ev-{number}",
        "source": "//gw-a",
        "event_time": when,
        "model_id": "m0",
        "payer": "p1",
        "compute_provider": "gpu-a",
        "fee_micros": fee_micros,
        "arrival": 1,
    }


def test_an_hour_a_policy_change_splits_is_read_from_its_events():
    """A policy taking effect at 05:30 pays c0 before and c1 after: the 05:00 cell's two events (one each side, in
    one rollup row) are split by their own times, as the events path does; the 04:00 cell comes from rollups."""
    world = World(
        models=[{"model_id": "m0", "parents": {}, "known_snapshot": 1}],
        policies=[_policy(0, start, "c0"), _policy(1, start + timedelta(hours=5, minutes=30), "c1")],
        events=[
            _event(1, start + timedelta(hours=4, minutes=10), 1_000),
            _event(2, start + timedelta(hours=5, minutes=10), 1_000),
            _event(3, start + timedelta(hours=5, minutes=50), 10_000),
        ],
    )
    (events,) = run_epochs(world)
    (rollups,) = run_epochs(world, path="rollups")
    assert _rows(rollups) == _rows(events)
    assert dict(zip(events.payables["recipient"], events.payables["credited_micros"], strict=True)) == {
        "c0": 1_800,
        "c1": 9_000,
        "gpu-a": 1_200,
    }
