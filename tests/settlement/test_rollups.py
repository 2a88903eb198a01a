"""Closing from the appends' rollups (settlement.rollups) gives exactly what closing from the events gives."""

import json
from datetime import datetime, timedelta

import polars as pl
from hypothesis import HealthCheck, given, settings

from ingest.sample import SampleTraffic
from ledger import Ledger
from ledger.rollups import payer_rollup_rows, rollup_rows
from settlement import close_epoch
from settlement.engine.policies import resolve
from settlement.ledger_io import plan_from_ledger
from settlement.rollups import weighted_events
from tests.settlement.split_world import World, event_frame, registry_frames, run_epochs, start, worlds
from tests.support.ledger_batches import append_in_batches, sample_messages, shape

fast = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _same_plans(world) -> None:
    for events, rollups in zip(run_epochs(world), run_epochs(world, path="rollups"), strict=True):
        assert _rows(rollups) == _rows(events)


def _rows(plan) -> dict:
    return {name: value.to_dicts() if isinstance(value, pl.DataFrame) else value for name, value in vars(plan).items()}


@fast
@given(worlds(mid_hour=True, duplicates=True))
def test_rollups_close_every_epoch_as_the_events_do(world):
    """Generated registries (policies taking effect mid-hour and on the hour), suspense, releases and reversals over
    several epochs, with same-id resends at another event time and ranges appended twice: every row and figure of
    every epoch is the same from rollups (the key groups' id bounds, the payer rollups) as from the events."""
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


def _plans(ledger: Ledger) -> tuple[dict, dict, tuple[int, int] | None]:
    events, _ = plan_from_ledger(ledger)
    rollups, extra = plan_from_ledger(ledger, from_rollups=True)
    return _rows(events), _rows(rollups), extra["rollup_cells"]


def _resent(message: bytes, hours: int, fee_micros: int) -> bytes:
    """The same event id sent again with another event time and fee (ingest's dedup looks at the batch's times)."""
    event = json.loads(message)
    when = datetime.fromisoformat(event["time"].replace("Z", "+00:00")) - timedelta(hours=hours)
    event["time"] = when.isoformat().replace("+00:00", "Z")
    event["data"]["fee_micros"] = fee_micros
    return json.dumps(event).encode()


def _reversal(number: int, original: bytes) -> bytes:
    event = json.loads(original)
    return json.dumps(
        {
            "specversion": "1.0",
            "id": f"rev-{number}",
            "source": event["source"],
            "type": "ai.inference.reversed.v1",
            "time": event["time"],
            "datacontenttype": "application/json",
            "data": {"original_event_id": event["id"], "reason": "refund"},
        }
    ).encode()


def test_duplicates_and_reversals_stored_in_the_ledger_close_alike_from_rollups(tmp_path):
    """Through DuckLake: a same-id resend with another event time (stored: ingest's dedup reads the batch's time
    range only), a range appended twice by a racing writer, and a reversal of an event of the same epoch; then a
    second epoch taking back a settled event. Each epoch plans the same from rollups as from the events, reading
    from events only the hour cells holding a duplicate or the reversed event."""
    values = sample_messages(400)
    metered = [v for v in values if b"ai.inference.metered.v1" in v]
    with Ledger.open(tmp_path / "l") as ledger:
        offset = append_in_batches(ledger, values, 0, 100)
        offset = append_in_batches(ledger, [_resent(metered[5], 3, 777), _reversal(1, metered[9])], offset, 10)
        stored = ledger.connection.execute(
            "SELECT * FROM lake.main.inference_metered ORDER BY event_id LIMIT 30"
        ).fetch_arrow_table()
        ledger.append_records({"inference_metered": stored})  # the racing writer's copy, with its rollups
        events, rollups, cells = _plans(ledger)
        assert rollups == events
        assert cells is not None and cells[0] > 0 and cells[1] >= 2, cells
        assert close_epoch(ledger, from_rollups=True).rollup_cells == cells
        later = list(SampleTraffic(shape, seed=11).metered(50))
        append_in_batches(ledger, [_reversal(2, metered[20]), *later], offset, 100)
        events, rollups, cells = _plans(ledger)
        assert rollups == events and events["reversal_count"] == 1
        # The sample's ids are random: every key group's id range meets an id range epoch 1's files hold, so every
        # cell is read from its events, where a copy of an event epoch 1 stored is dropped as the events path drops it
        # (`settlement.rollups._groups_earlier_files_reach`; the whole epoch was read from the events before).
        assert cells is not None and cells[0] == 0 and cells[1] > 0, cells


def test_events_appended_without_rollups_close_from_the_events(tmp_path):
    """A range holding an append that wrote no rollups (a ledger from before format 13) is read from its events."""
    with Ledger.open(tmp_path / "l") as ledger:
        append_in_batches(ledger, sample_messages(50), 0, 100)
        ledger.connection.execute(
            "INSERT INTO lake.main.inference_metered SELECT * REPLACE (event_id || '-x' AS event_id) "
            "FROM lake.main.inference_metered LIMIT 5"
        )
        events, rollups, cells = _plans(ledger)
        assert cells is None and rollups == events and events["event_count"] == 55


def test_rollups_that_do_not_count_every_stored_event_are_not_used():
    """Rollups missing an event (a file added behind the ledger's back in a snapshot that also wrote rollups), payer
    rollups missing one, or rollup rows without their group's id bounds (appended before format 16) are refused as a
    whole: the epoch is read from its events."""
    events = event_frame([_event(1, start, 1_000), _event(2, start + timedelta(minutes=5), 2_000)])
    world = World(models=[{"model_id": "m0", "parents": {}, "known_snapshot": 1}], policies=[_policy(0, start, "c0")])
    models, policies = registry_frames(world)
    originals = pl.DataFrame(schema={**event_frame([]).schema, "arrival_snapshot": pl.Int64})
    resolution = resolve(models, policies, 1)

    def rolled(rows: pl.DataFrame, payer_rows: pl.DataFrame):
        model = pl.from_arrow(rollup_rows(rows.to_arrow(), "append-1"))
        payer = pl.from_arrow(payer_rollup_rows(payer_rows.to_arrow(), "append-1"))
        return model, payer

    model, payer = rolled(events, events)
    assert weighted_events(model, events.lazy(), resolution, originals, payer) is not None
    for partial_model, partial_payer in [rolled(events.head(1), events), rolled(events, events.head(1))]:
        assert weighted_events(partial_model, events.lazy(), resolution, originals, partial_payer) is None
    unbounded = model.with_columns(pl.lit(None, pl.String).alias("group_event_id_min"))
    assert weighted_events(unbounded, events.lazy(), resolution, originals, payer) is None


def test_close_epoch_from_rollups_on_the_command_line(tmp_path):
    """`royalty close-epoch --from-rollups` closes from rollups and says how many hour cells it read each way; the
    setting `close_from_rollups` does the same, and `--from-events` overrides it."""
    from typer.testing import CliRunner

    from royalty.cli import app

    with Ledger.open(tmp_path / "l") as ledger:
        append_in_batches(ledger, sample_messages(60), 0, 100)
    lake = str(tmp_path / "l")
    dry = CliRunner().invoke(app, ["close-epoch", "--lake", lake, "--dry-run", "--from-rollups"])
    assert dry.exit_code == 0 and "hour cells read from rollups" in dry.stdout, dry.output
    events = CliRunner().invoke(
        app, ["close-epoch", "--lake", lake, "--dry-run", "--from-events"], env={"ROYALTY_CLOSE_FROM_ROLLUPS": "true"}
    )
    assert events.exit_code == 0 and "hour cells" not in events.stdout, events.output
    closed = CliRunner().invoke(app, ["close-epoch", "--lake", lake], env={"ROYALTY_CLOSE_FROM_ROLLUPS": "true"})
    assert closed.exit_code == 0 and "hour cells read from rollups" in closed.stdout, closed.output


def test_appends_whose_ids_grow_close_from_rollups_without_reading_an_event(tmp_path, monkeypatch):
    """Appends of events whose ids grow with arrival (the sample's UUIDv7) have key groups whose id ranges do not
    overlap: the close reads the rollups and payer rollups and no event column (the events' scan is replaced by
    one holding only as many rows), and plans what the events path plans."""
    import settlement.rollups as rollups_module

    with Ledger.open(tmp_path / "l") as ledger:
        append_in_batches(ledger, sample_messages(300), 0, 50)
        events, _ = plan_from_ledger(ledger)
        (stored,) = ledger.connection.execute("SELECT count(*) FROM lake.main.inference_metered").fetchone()
        monkeypatch.setattr(rollups_module, "_scan_events", lambda paths: pl.LazyFrame({"row": list(range(stored))}))
        rollups, extra = plan_from_ledger(ledger, from_rollups=True)
    assert extra["rollup_cells"] is not None and extra["rollup_cells"][1] == 0
    assert _rows(rollups) == _rows(events)


def test_key_groups_are_per_source_and_a_shared_id_of_one_source_reads_its_cells():
    """Two sources counting ids alike (`ev-1`, `ev-2` each) in two appends share no event: every cell comes from
    rollups. A third append resending `ev-1` of one source at another hour makes that source's overlapping groups'
    cells (both hours) be read from the events; the other source's cell stays from rollups."""
    world = World(models=[{"model_id": "m0", "parents": {}, "known_snapshot": 1}], policies=[_policy(0, start, "c0")])
    models, policies = registry_frames(world)
    originals = pl.DataFrame(schema={**event_frame([]).schema, "arrival_snapshot": pl.Int64})
    resolution = resolve(models, policies, 1)
    hour = timedelta(hours=1)
    appends = [
        event_frame([_event(1, start, 1_000), _event(2, start + timedelta(minutes=5), 2_000)]),
        event_frame([_event(1, start, 3_000), _event(2, start, 4_000)]).with_columns(source=pl.lit("//gw-b")),
        event_frame([_event(1, start + 3 * hour, 5_000)]),
    ]

    def closed(parts: list[pl.DataFrame]):
        model, payer = (
            pl.concat([pl.from_arrow(rows(part.to_arrow(), f"append-{n}")) for n, part in enumerate(parts)])
            for rows in (rollup_rows, payer_rollup_rows)
        )
        return weighted_events(model, pl.concat(parts).lazy(), resolution, originals, payer)

    two = closed(appends[:2])
    assert two is not None and (two.rollup_cells, two.event_cells) == (1, 0)
    three = closed(appends)
    assert three is not None and three.event_cells == 2  # m0 at 00:00 and at 03:00, read from //gw-a's events
    assert three.payer_fees["fee_micros"].sum() == 1_000 + 2_000 + 3_000 + 4_000  # the resend's copy dropped
