"""The polars engine against the independent DuckDB SQL implementation of rules 1-6."""

import duckdb
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings

from ledger import Ledger
from settlement import close_epoch
from settlement.engine.reference_sql import reference_payables
from settlement.ledger_io import plan_from_ledger
from tests.conftest import depth
from tests.settlement.split_world import event_frame, registry_frames, run_epochs, worlds
from tests.support.ledger_batches import append_in_batches, sample_messages


def _compare(world, path: str = "events") -> None:
    world.reversals = []
    for row in world.models + world.policies + world.events:
        row.setdefault("known_snapshot", 1)
        row["known_snapshot"] = 1
    for event in world.events:
        event["arrival"] = 1
    world.epochs = 1
    (plan,) = run_epochs(world, path=path)
    models, policies = registry_frames(world)
    connection = duckdb.connect()
    connection.register("ev", event_frame(world.events).to_arrow())
    connection.register("mo", models.to_arrow())
    connection.register("po", policies.to_arrow())
    expected = reference_payables(connection, "ev", "mo", "po")
    got = plan.payables.select("recipient", pl.col("credited_micros").cast(pl.Int128).alias("amount_micros"))
    assert got.equals(expected.cast({"amount_micros": pl.Int128})), (got, expected)


@pytest.mark.parametrize("path", ["events", "rollups"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(world=worlds(epochs_max=1))
def test_generated_registries_split_identically_in_sql(world, path):
    """Generated lineage DAGs, policy changes and missing policies: polars and SQL credit the same units, whether
    the epoch reads the events or the appends' rollups (settlement.rollups)."""
    _compare(world, path)


@pytest.mark.slow
def test_many_events_through_the_ledger_match_the_sql_reference(tmp_path):
    """Cross-check at scale: sample events (250,000 in CI, a million nightly) closed through DuckLake equal the
    SQL payables."""
    events = depth(250_000, 1_000_000)
    with Ledger.open(tmp_path / "l") as ledger:
        append_in_batches(ledger, sample_messages(events), 0, events // 4)
        from_rollups, extra = plan_from_ledger(ledger, from_rollups=True)
        assert extra["rollup_cells"] is not None and extra["rollup_cells"][0] > 0
        close_epoch(ledger)
        c = ledger.connection
        got = pl.from_arrow(
            c.execute(
                "SELECT recipient, credited_micros::HUGEINT AS amount_micros FROM lake.main.settlement_payable "
                "ORDER BY 1"
            ).fetch_arrow_table()
        )
        expected = reference_payables(
            c, "lake.main.inference_metered", "lake.main.model_registered", "lake.main.split_policy_set"
        )
        assert got.equals(expected)
        rolled = from_rollups.payables.select(
            "recipient", pl.col("credited_micros").cast(pl.Int128).alias("amount_micros")
        )
        assert rolled.equals(expected.cast({"amount_micros": pl.Int128}))  # the rollup path: the same payables
