"""Closing from the appends' rollups (settlement.rollups) gives exactly what closing from the events gives."""

import polars as pl
from hypothesis import HealthCheck, given, settings

from tests.settlement.split_world import run_epochs, worlds

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
