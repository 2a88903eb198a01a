"""Appending to the ledger: round trip to SQL, duplicates, dead letters and offsets."""

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.sample import SampleTraffic, conflicting_duplicate
from ledger import Ledger, LedgerOffsetsFencedError, LedgerReadOnlyError, define_views, run_query
from tests.ledger.helpers import batch_of
from tests.strategies import encode, utc, valid_event

_views = {
    "ai.inference.metered.v1": "inference_events",
    "ai.inference.reversed.v1": "reversals",
    "ai.contributor.registered.v1": "contributor_registrations",
    "ai.model.registered.v1": "model_registrations",
    "ai.split-policy.set.v1": "split_policies",
}


@settings(max_examples=15)
@given(events=st.lists(valid_event(), min_size=1, max_size=12, unique_by=lambda e: e["id"]))
def test_valid_events_round_trip_json_arrow_ledger_sql_unchanged(tmp_path_factory, events) -> None:
    """Generated events of every type, appended and read back through the analyst views, equal what was sent."""
    lake = tmp_path_factory.mktemp("lake")
    with Ledger.open(lake) as ledger:
        batch, offsets = batch_of([encode(event) for event in events])
        result = ledger.append(batch, offsets)
    assert (result.events, result.duplicates, result.dead_letters) == (len(events), 0, 0)
    with Ledger.open_read_only(lake) as reader:
        define_views(reader)
        stored = {
            (view, row["event_id"]): row
            for view in set(_views.values())
            for row in run_query(reader, f"SELECT * FROM {view}").to_pylist()
        }
        assert len(stored) == len(events)
        for event in events:
            row = stored[(_views[event["type"]], event["id"])]
            assert row["event_time"] == utc(event["time"])
            assert row["source"] == event["source"]
            for name, value in event["data"].items():
                assert row[name] == (utc(value) if name == "effective_from" else value), name


def test_exact_duplicates_are_dropped_and_conflicting_ones_dead_lettered(lake_dir: Path) -> None:
    """Resending events (same and different content) across and within batches stores each id once."""
    traffic = SampleTraffic()
    values = list(traffic.metered(500))
    with Ledger.open(lake_dir) as ledger:
        first = ledger.append(*batch_of([*values, values[3]]))
        assert (first.events, first.duplicates, first.dead_letters) == (500, 1, 0)
        resent = [*values[:100], conflicting_duplicate(values[7])]
        second = ledger.append(*batch_of(resent, first_offset=501))
        assert (second.events, second.duplicates, second.dead_letters) == (0, 100, 1)
        (count, distinct) = ledger.connection.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM lake.main.inference_metered"
        ).fetchone()
        assert count == distinct == 500
        (reason, field, offset) = ledger.connection.execute(
            "SELECT reason, error_field, kafka_offset FROM lake.main.dead_letter"
        ).fetchone()
        assert "conflicting duplicate" in reason and json.loads(values[7])["id"] in reason
        assert (field, offset) == ("id", 601)


def test_bad_messages_become_dead_letters_with_raw_bytes_and_position(lake_dir: Path) -> None:
    """Invalid messages are stored once each with raw bytes, position and reason; good ones beside them kept."""
    good = list(SampleTraffic().metered(10))
    values = [*good[:5], b"\xffgarbage", good[5].replace(b'"fee_micros":', b'"fee_micros":-'), *good[5:]]
    with Ledger.open(lake_dir) as ledger:
        result = ledger.append(*batch_of(values, topic="events", partition=3, first_offset=40))
        assert (result.events, result.dead_letters) == (10, 2)
        define_views(ledger)
        rows = run_query(ledger, "SELECT * FROM dead_letters ORDER BY kafka_offset").to_pylist()
    assert [(r["kafka_topic"], r["kafka_partition"], r["kafka_offset"]) for r in rows] == [
        ("events", 3, 45), ("events", 3, 46)
    ]
    assert rows[0]["raw"] == b"\xffgarbage" and "not UTF-8" in rows[0]["reason"]
    assert rows[1]["error_field"] == "data.fee_micros" and rows[1]["event_id"] == json.loads(good[5])["id"]


def test_a_record_without_a_value_is_a_dead_letter_with_no_bytes(lake_dir: Path) -> None:
    """A Kafka tombstone (null value) is stored as a dead letter at its position, beside the good events."""
    good = list(SampleTraffic().metered(3))
    with Ledger.open(lake_dir) as ledger:
        result = ledger.append(*batch_of([good[0], None, *good[1:]], topic="events", partition=1, first_offset=7))
        assert (result.events, result.dead_letters) == (3, 1)
        define_views(ledger)
        (row,) = run_query(ledger, "SELECT * FROM dead_letters").to_pylist()
    assert (row["kafka_offset"], row["raw"], row["raw_size_bytes"]) == (8, b"", 0)
    assert "no value" in row["reason"] and "tombstone" in row["reason"]


def test_reader_refuses_every_kind_of_write(lake_dir: Path) -> None:
    """Writes through `run_query` fail with a clear error before they run, whatever the statement."""
    with Ledger.open(lake_dir) as ledger:
        ledger.append(*batch_of(list(SampleTraffic().metered(3))))
    with Ledger.open_read_only(lake_dir) as reader:
        define_views(reader)
        for statement in [
            "DELETE FROM lake.main.inference_metered",
            "INSERT INTO lake.main.ingest_offset VALUES ('x', 0, 0, 1, 'b')",
            "UPDATE lake.main.dead_letter SET reason = 'x'",
            "COPY (SELECT 1) TO 'out.csv'",
            "SELECT 1; DROP TABLE lake.main.inference_metered",
        ]:
            with pytest.raises(LedgerReadOnlyError, match="read-only"):
                run_query(reader, statement)
        assert run_query(reader, "SELECT count(*) AS n FROM inference_events").to_pylist() == [{"n": 3}]


def test_a_writer_reconnects_every_so_many_appends_and_carries_on_exactly(
    lake_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection is replaced after `appends_per_connection_max` appends (bounding DuckDB's per-connection
    caches); appends after it keep deduplicating against earlier ones and fencing offsets."""
    import ledger.ledger as ledger_module

    monkeypatch.setattr(ledger_module, "appends_per_connection_max", 3)
    values = list(SampleTraffic().metered(70))
    with Ledger.open(lake_dir) as ledger:
        connections = [ledger.connection]
        for index in range(7):
            ledger.append(*batch_of(values[index * 10 : index * 10 + 10], first_offset=index * 10))
            if ledger.connection is not connections[-1]:
                connections.append(ledger.connection)
        assert len(connections) == 3  # after appends 3 and 6
        resent = ledger.append(*batch_of([*values[:10], conflicting_duplicate(values[0])], first_offset=70))
        assert (resent.events, resent.duplicates, resent.dead_letters) == (0, 10, 1)
        with pytest.raises(LedgerOffsetsFencedError):
            ledger.append(*batch_of(values[:5], first_offset=60))
        (count,) = ledger.connection.execute("SELECT count(*) FROM lake.main.inference_metered").fetchone()
        assert count == 70 and ledger.stored_offsets() == {("t", 0): 81}


def _metered_at(event_id: str, minute: int) -> bytes:
    data = {
        "model_id": "m", "payer": "org-1", "compute_provider": "gpu-1", "input_tokens": 1, "output_tokens": 1,
        "fee_micros": 1_000, "asset": "USDC", "request_id": f"r-{event_id}",
    }  # fmt: skip
    envelope = {"specversion": "1.0", "id": event_id, "source": "//gw", "type": "ai.inference.metered.v1"}
    return json.dumps({**envelope, "time": f"2026-12-01T10:{minute:02d}:00Z", "data": data}).encode()


def test_a_resend_identical_to_one_of_two_stored_copies_is_one_duplicate_and_no_dead_letter(lake_dir: Path) -> None:
    """ev-1 is stored twice: a resend with another event time passes the duplicate probe, which looks at the batch's
    times. A third copy, identical to the first, comes in a batch whose times cover both stored copies: it is one
    dropped duplicate. Before, it was compared with each stored copy, so it was counted as a duplicate AND stored as a
    `conflicting_duplicate` dead letter (3 outcomes for 2 messages), whose runbook says to resend it with a new id:
    that resend would have been paid a second time."""
    with Ledger.open(lake_dir) as ledger:
        assert ledger.append(*batch_of([_metered_at("ev-1", 0)])).events == 1
        assert ledger.append(*batch_of([_metered_at("ev-1", 30)], first_offset=1)).events == 1
        result = ledger.append(*batch_of([_metered_at("ev-1", 0), _metered_at("ev-2", 40)], first_offset=2))
        assert (result.events, result.duplicates, result.dead_letters) == (1, 1, 0)  # was (1, 1, 1)
        (dead,) = ledger.connection.execute("SELECT count(*) FROM lake.main.dead_letter").fetchone()
        assert dead == 0


def test_appends_leave_one_thread_and_commit_retries_on_for_the_next_and_every_other_use_gets_the_defaults_back(
    lake_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Consecutive small appends keep `threads = 1` and DuckLake's commit retries (for tables whose column maps the
    connection committed) between them, each change of a setting costing CPU; any other use of the connection, and a
    large append, runs with the connection's own thread count, and any other commit with DuckLake's retries off."""
    from ledger import constants

    values = list(SampleTraffic().metered(300))
    with Ledger.open(lake_dir) as ledger:
        ledger.connection.execute("SET threads = 3")
        seen: list[tuple[int, int]] = []
        insert_bookkeeping = ledger._insert_bookkeeping

        def spying(*args) -> None:
            seen.append(_settings(ledger._connection))
            insert_bookkeeping(*args)

        monkeypatch.setattr(ledger, "_insert_bookkeeping", spying)
        ledger.append(*batch_of(values[:100]))
        ledger.append(*batch_of(values[100:200], first_offset=100))
        retries = constants.ducklake_commit_retries_max
        assert seen == [(1, 0), (1, retries)]  # the first append's tables had no column maps yet
        assert _settings(ledger.connection) == (3, 0)
        ledger.append(*batch_of(values[200:250], first_offset=200))
        committed: list[tuple[int, int]] = []
        with ledger._transaction():  # any other commit: DuckLake's retries turned off before it
            ledger.connection.execute("SELECT count(*) FROM lake.main.ledger_format").fetchall()
            committed.append(_settings(ledger._connection))
        assert committed == [(3, 0)]
        monkeypatch.setattr(constants, "append_one_thread_messages_max", 20)
        ledger.append(*batch_of(values[250:], first_offset=250))
        assert seen[2:] == [(1, retries), (3, retries)]


def _settings(connection) -> tuple[int, int]:
    """A connection's DuckDB thread count and DuckLake commit retries."""
    return connection.execute(
        "SELECT current_setting('threads'), current_setting('ducklake_max_retry_count')"
    ).fetchone()


def test_a_batch_within_stored_rows_bounds_keeps_its_new_events_and_drops_only_the_stored_ones(lake_dir: Path) -> None:
    """A batch whose times and ids lie within stored rows' (the cheap bounds check says "maybe") is probed by id:
    its new events are kept, its resent ones dropped."""
    values = list(SampleTraffic().metered(300))
    with Ledger.open(lake_dir) as ledger:
        ledger.append(*batch_of(values[::2]))
        result = ledger.append(*batch_of([*values[1::2], values[10]], first_offset=150))
        assert (result.events, result.duplicates, result.dead_letters) == (150, 1, 0)
        ((stored,),) = ledger.connection.execute(
            "SELECT count(DISTINCT event_id) FROM lake.main.inference_metered"
        ).fetchall()
    assert stored == 300
