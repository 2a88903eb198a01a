"""Events are keyed by (source, id), as CloudEvents defines, through ingest, settlement and reversals.

Before, two producers both using id `42` lost one event at ingest (a duplicate, or a conflict dead
letter), and a reversal of `42` hit whichever was stored.
"""

import json
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa

from ingest.sample import SampleShape, SampleTraffic
from ledger import Ledger
from settlement import close_epoch, tables
from settlement.engine.authority import RegistryRules
from settlement.engine.reference_sql import reference_payables
from settlement.engine.splits import key_of
from settlement.ledger_io import read_prior
from tests.ledger.helpers import batch_of

shape = SampleShape(models=3, contributors=6, compute_providers=2, payers=5, derived_models_ppm=0)


def _metered(base: bytes, source: str, event_id: str, fee_micros: int) -> bytes:
    event = json.loads(base)
    event.update(source=source, id=event_id)
    event["data"]["fee_micros"] = fee_micros
    return json.dumps(event, separators=(",", ":")).encode()


def _reversal(source: str, event_id: str, original: str, original_source: str | None = None) -> bytes:
    data = {"original_event_id": original, "reason": "refund"}
    if original_source is not None:
        data["original_source"] = original_source
    return json.dumps(
        {
            "specversion": "1.0", "id": event_id, "source": source, "type": "ai.inference.reversed.v1",
            "time": "2026-11-25T00:00:00Z", "data": data,
        }
    ).encode()


def _world() -> tuple[list[bytes], bytes]:
    traffic = SampleTraffic(shape, seed=11)
    registry = list(traffic.registry())
    (base,) = traffic.metered(1)
    return registry, base


def test_the_same_id_from_two_sources_is_stored_twice_and_paid_twice(tmp_path: Path) -> None:
    """Pins ingest and settlement: `42` from //gw-a and from //gw-b are two events, both paid, as the SQL
    reference also computes from the raw table."""
    registry, base = _world()
    events = [_metered(base, "//gw-a", "42", 1_000_000), _metered(base, "//gw-b", "42", 3_000_000)]
    with Ledger.open(tmp_path / "lake") as ledger:
        ledger.append(*batch_of(registry))
        result = ledger.append(*batch_of(events, first_offset=len(registry)))
        assert (result.events, result.duplicates, result.dead_letters) == (2, 0, 0)
        plan = close_epoch(ledger)
        assert (plan.event_count, plan.fee_micros) == (2, 4_000_000)
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
    assert expected["amount_micros"].sum() == 4_000_000


def test_a_conflict_is_a_conflict_only_within_one_source(tmp_path: Path) -> None:
    """Pins the conflict rule: other content under the same (source, id) is a dead letter; under
    another source it is another event."""
    _, base = _world()
    first = _metered(base, "//gw-a", "42", 1_000)
    with Ledger.open(tmp_path / "lake") as ledger:
        ledger.append(*batch_of([first]))
        again = [first, _metered(base, "//gw-a", "42", 9_999), _metered(base, "//gw-b", "42", 9_999)]
        result = ledger.append(*batch_of(again, first_offset=1))
        assert (result.events, result.duplicates, result.dead_letters) == (1, 1, 1)
        (reason, offset) = ledger.connection.execute(
            "SELECT reason, kafka_offset FROM lake.main.dead_letter"
        ).fetchone()
        stored = ledger.connection.execute(
            "SELECT source, fee_micros FROM lake.main.inference_metered ORDER BY source"
        ).fetchall()
    assert "conflicting duplicate" in reason and offset == 2
    assert stored == [("//gw-a", 1_000), ("//gw-b", 9_999)]


def test_a_reversal_resolves_within_its_source_unless_it_names_original_source(tmp_path: Path) -> None:
    """Pins reversal lookup across sources: //gw-b reverses its own `42`; //billing (trusted by
    `reversal_sources`) reverses //gw-a's `42` by naming original_source, and without it finds no `42` of its
    own (a dead letter); //intruder, not trusted, may not reverse //gw-b's (`unauthorized_source`)."""
    registry, base = _world()
    events = [_metered(base, "//gw-a", "42", 1_000_000), _metered(base, "//gw-b", "42", 3_000_000)]
    reversals = [
        _reversal("//gw-b", "r-1", "42"),
        _reversal("//billing", "r-2", "42", original_source="//gw-a"),
        _reversal("//billing", "r-3", "42"),
        _reversal("//intruder", "r-4", "42", original_source="//gw-b"),
    ]
    rules = RegistryRules(reversal_sources=("//billing",))
    with Ledger.open(tmp_path / "lake") as ledger:
        offset = len(registry) + len(events)
        ledger.append(*batch_of(registry + events))
        close_epoch(ledger, rules=rules)
        ledger.append(*batch_of(reversals, first_offset=offset))
        plan = close_epoch(ledger, rules=rules)
        rows = ledger.connection.execute(
            "SELECT event_id, source, original_source, outcome, fee_micros FROM lake.main.settlement_reversal "
            "ORDER BY event_id"
        ).fetchall()
        (dead_letter,) = ledger.connection.execute(
            "SELECT reason FROM lake.main.dead_letter WHERE event_id = 'r-3'"
        ).fetchone()
        (intruder_code,) = ledger.connection.execute(
            "SELECT reason_code FROM lake.main.dead_letter WHERE event_id = 'r-4'"
        ).fetchone()
    assert rows == [
        ("r-1", "//gw-b", "//gw-b", "taken_back", -3_000_000),
        ("r-2", "//billing", "//gw-a", "taken_back", -1_000_000),
        ("r-3", "//billing", "//billing", "dead_letter", None),
        ("r-4", "//intruder", "//gw-b", "dead_letter", None),
    ]
    assert intruder_code == "unauthorized_source"
    assert plan.reversed_micros == 4_000_000
    assert "unknown event `42` of source `//billing`" in dead_letter and "original_source" in dead_letter


def test_the_reference_sql_keeps_one_row_per_source_and_id() -> None:
    """Pins the reference's own dedup: a row repeated under one (source, id) counts once, under two sources twice."""
    registry_models = pl.DataFrame(
        {"event_id": ["m"], "event_time": ["2026-01-01T00:00:00Z"], "model_id": ["m0"], "parents": [[]]},
        schema_overrides={"parents": pl.List(pl.Struct({"model_id": pl.String, "share_ppm": pl.Int64}))},
    ).with_columns(pl.col("event_time").str.to_datetime(time_zone="UTC"))
    policies = pl.DataFrame(
        {
            "event_id": ["p"], "event_time": ["2026-01-01T00:00:00Z"], "model_id": ["m0"],
            "effective_from": ["2026-01-01T00:00:00Z"], "compute_share_ppm": [0],
            "shares": [[{"recipient": "alice", "share_ppm": 1_000_000}]],
        }
    ).with_columns(pl.col("event_time", "effective_from").str.to_datetime(time_zone="UTC"))
    row = {"event_time": "2026-01-02T00:00:00Z", "model_id": "m0", "payer": "p", "compute_provider": "g",
           "fee_micros": 100}
    events = pl.DataFrame(
        [{"event_id": "42", "source": s, **row} for s in ("//gw-a", "//gw-a", "//gw-b")]
    ).with_columns(pl.col("event_time").str.to_datetime(time_zone="UTC"))
    connection = duckdb.connect()
    connection.register("ev", events.to_arrow())
    connection.register("mo", registry_models.to_arrow())
    connection.register("po", policies.to_arrow())
    credits = reference_payables(connection, "ev", "mo", "po")
    assert credits.rows() == [("alice", 200)]


def test_settlement_rows_written_before_format_4_take_the_source_of_their_event(tmp_path: Path) -> None:
    """Pins the reading of older rows: a suspense item, release or reversal without a source (ledger
    format < 4, when ids were unique) is the one metered event with that id, and gets its source."""
    registry, base = _world()
    with Ledger.open(tmp_path / "lake") as ledger:
        ledger.append(*batch_of([*registry, _metered(base, "//gw-a", "7", 500), _metered(base, "//gw-a", "8", 600)]))
        close_epoch(ledger)
        held = {"epoch": [1], "event_id": ["7"], "event_time": [datetime(2026, 11, 23, tzinfo=UTC)],
                "model_id": ["model-0000"], "payer": ["p"], "compute_provider": ["g"], "fee_micros": [500],
                "source": [None]}
        reversal = {"epoch": [1], "event_id": ["r"], "original_event_id": ["8"], "outcome": ["taken_back"],
                    "fee_micros": [-600], "settled_snapshot": [1], "source": [None], "original_source": [None]}
        ledger.append_records(
            {
                "settlement_suspense_item": pa.table(held, schema=tables.suspense_item_schema),
                "settlement_reversal": pa.table(reversal, schema=tables.reversal_schema),
            }
        )
        prior = read_prior(ledger.connection)
    assert prior.held.select("source", "event_id").rows() == [("//gw-a", "7")]
    assert prior.reversed_ids == {key_of("//gw-a", "8")}
