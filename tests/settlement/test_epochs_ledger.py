"""Closing epochs through a real DuckLake ledger in a temporary folder."""

import json
import random

import polars as pl
import pytest

from ingest.sample import metered_source as sample_source
from ledger import Ledger, define_views, run_query
from ledger.verify import verify
from settlement import close_epoch
from settlement.engine.authority import RegistryRules
from settlement.ledger_io import plan_from_ledger
from tests.support.ledger_batches import append_in_batches, sample_messages


def _reversal(event_id: str, original: str) -> bytes:
    return json.dumps(
        {
            "specversion": "1.0",
            "id": event_id,
            "source": "//billing.example",
            "type": "ai.inference.reversed.v1",
            "time": "2026-11-25T00:00:00Z",
            "datacontenttype": "application/json",
            # The billing system reverses a gateway's event: it names the gateway's source.
            "data": {"original_event_id": original, "reason": "refund", "original_source": sample_source},
        }
    ).encode()


def _tables(ledger: Ledger) -> tuple[pl.DataFrame, pl.DataFrame]:
    c = ledger.connection
    postings = pl.from_arrow(
        c.execute(
            "SELECT entry_id, account, amount_micros FROM lake.main.settlement_posting ORDER BY ALL"
        ).fetch_arrow_table()
    )
    payables = pl.from_arrow(
        c.execute(
            "SELECT recipient, amount_micros, cumulative_micros "
            "FROM lake.main.settlement_payable ORDER BY ALL"
        ).fetch_arrow_table()
    )
    return postings, payables


def test_ingest_batching_and_order_do_not_change_postings_or_payables(tmp_path):
    """Determinism: the same events in shuffled order and other batch sizes close to identical rows."""
    values = sample_messages(600)
    results = []
    for name, size, seed in (("a", 1_000, None), ("b", 37, 5)):
        shuffled = list(values)
        if seed is not None:
            random.Random(seed).shuffle(shuffled)
        with Ledger.open(tmp_path / name) as ledger:
            append_in_batches(ledger, shuffled, 0, size)
            close_epoch(ledger)
            results.append(_tables(ledger))
    assert results[0][0].equals(results[1][0])
    assert results[0][1].equals(results[1][1])


def test_dry_run_writes_nothing_and_a_second_close_is_a_noop(tmp_path):
    """close-epoch --dry-run leaves the snapshot unchanged; closing twice with no new events says noop."""
    with Ledger.open(tmp_path / "l") as ledger:
        append_in_batches(ledger, sample_messages(200), 0, 500)
        before = ledger.current_snapshot()
        dry = close_epoch(ledger, dry_run=True)
        assert ledger.current_snapshot() == before and dry.event_count == 200 and not dry.noop
        real = close_epoch(ledger)
        assert (real.epoch, real.payable_micros, real.posting_count) == (
            1,
            dry.payable_micros,
            dry.posting_count,
        )
        again = close_epoch(ledger)
        assert again.noop and again.written_snapshot is None
        assert verify(ledger).ok


def test_late_events_settle_in_the_next_epoch_and_reversals_take_back(tmp_path):
    """Rules 1 and 7: epoch 2 holds only the events appended after epoch 1; bad reversals are dead letters."""
    values = sample_messages(300)
    with Ledger.open(tmp_path / "l") as ledger:
        offset = append_in_batches(ledger, values[:-100], 0, 400)
        first = close_epoch(ledger)
        settled_id = json.loads(values[-101])["id"]
        offset = append_in_batches(ledger, values[-100:], offset, 400)
        append_in_batches(
            ledger,
            [_reversal("r1", settled_id), _reversal("r2", settled_id), _reversal("r3", "nope")],
            offset,
            10,
        )
        second = close_epoch(ledger, rules=RegistryRules(reversal_sources=("//billing.example",)))
        assert first.event_count + second.event_count == 300
        assert (second.reversal_count, second.dead_letter_count) == (3, 2)
        fee = json.loads(values[-101])["data"]["fee_micros"]
        assert second.reversed_micros == fee
        define_views(ledger)
        (total,) = run_query(ledger, "SELECT sum(balance_micros) FROM balances").to_pylist()[0].values()
        assert total == 0
        dead = ledger.connection.execute(
            "SELECT event_id, reason_code FROM lake.main.dead_letter ORDER BY 1"
        ).fetchall()
        assert dead == [("r2", "reversal_repeated"), ("r3", "reversal_unresolved")]
        rows = run_query(
            ledger, "SELECT epoch, sum(amount_micros) FROM postings GROUP BY 1 ORDER BY 1"
        ).to_pylist()
        assert [list(r.values())[1] for r in rows] == [0, 0]
        epochs = run_query(
            ledger, "SELECT epoch, event_count, fee_micros, suspense_micros FROM epochs ORDER BY 1"
        )
        assert epochs.column("event_count").to_pylist() == [first.event_count, second.event_count]
        assert verify(ledger).ok


def test_concurrent_close_is_refused_without_writing(tmp_path):
    """A plan made before another process closed the same epoch is refused by the write precondition."""
    from settlement.engine.exceptions import EpochConflictError
    from settlement.ledger_io import write_plan

    with Ledger.open(tmp_path / "l") as ledger:
        append_in_batches(ledger, sample_messages(50), 0, 500)
        plan, extra = plan_from_ledger(ledger)
        close_epoch(ledger)
        with pytest.raises(EpochConflictError):
            write_plan(ledger, plan, extra["reversals"])


def test_events_stored_twice_behind_ingest_are_settled_once_and_the_same_way_every_time(tmp_path):
    """The settlement's own deduplication (for two writers that both passed the offsets fence): rows of events
    already in the ledger, written again straight into the table, one of them with another fee, are settled
    once each; the epoch equals the one closed without the extra rows except for the conflicting event, and
    two ledgers with the same rows pick the same version of it."""
    values = sample_messages(300)
    clean = tmp_path / "clean"
    with Ledger.open(clean) as ledger:
        append_in_batches(ledger, values, 0, 1_000)
        close_epoch(ledger)
        expected = _tables(ledger)

    def doubled(name: str) -> tuple[pl.DataFrame, pl.DataFrame, tuple]:
        with Ledger.open(tmp_path / name) as ledger:
            append_in_batches(ledger, values, 0, 1_000)
            stored = ledger.connection.execute(
                "SELECT * FROM lake.main.inference_metered ORDER BY event_id LIMIT 40"
            ).fetch_arrow_table()
            again = pl.from_arrow(stored).with_columns(
                fee_micros=pl.when(pl.int_range(pl.len()) == 0)
                .then(pl.col("fee_micros") + 1)
                .otherwise(pl.col("fee_micros"))
            )
            ledger.append_records({"inference_metered": again.to_arrow().cast(stored.schema)})
            close_epoch(ledger)
            epoch = ledger.connection.execute(
                "SELECT event_count, fee_micros FROM lake.main.settlement_epoch"
            ).fetchone()
            return (*_tables(ledger), epoch)

    first, second = doubled("doubled-1"), doubled("doubled-2")
    assert first[0].equals(second[0]) and first[1].equals(second[1]) and first[2] == second[2]
    with Ledger.open_read_only(clean) as ledger:
        clean_epoch = ledger.connection.execute(
            "SELECT event_count, fee_micros FROM lake.main.settlement_epoch"
        ).fetchone()
    assert first[2][0] == clean_epoch[0]  # every event once
    assert first[2][1] - clean_epoch[1] in (0, 1)  # the conflicting event's fee, counted once
    if first[2][1] == clean_epoch[1]:
        assert first[0].equals(expected[0]) and first[1].equals(expected[1])
