"""`ingest --compact-when-idle-s` (issue 19): a quiet source lets the service compact the ledger it writes.

A scripted source delivers real sample events in small batches (many small files, as a low-traffic day makes),
then goes quiet; the service compacts once per quiet spell on its append worker, the rows and `verify` are
unchanged, and a failing compaction is logged and counted without stopping ingest.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ingest.service import IngestService
from ingest.sources import Messages
from ledger import Ledger, LedgerBusyError
from ledger.compaction import CompactionReport, compact
from ledger.expiry import ExpiryReport
from ledger.verify import verify
from tests.support.ledger_batches import sample_messages

TOPIC = "events"


class QuietAfterSource:
    """Partition 0 holding `values`, `chunk` a poll, then quiet."""

    def __init__(self, values: list[bytes], chunk: int, interval_s: float = 0.1) -> None:
        self.values, self.chunk, self.position = list(values), chunk, 0
        # A chunk at most every `interval_s`: a trickle, so each lands in an append (a file) of its own.
        self.interval_s, self.delivered_at = interval_s, 0.0

    def seek(self, stored_offsets: dict[tuple[str, int], int]) -> None:
        self.position = stored_offsets.get((TOPIC, 0), 0)

    def poll(self, records_max: int, timeout_ms: int, bytes_max: int | None = None) -> Messages:
        if time.monotonic() - self.delivered_at < self.interval_s:
            time.sleep(0.02)
            return Messages([], [], [], [])
        self.delivered_at = time.monotonic()
        end = min(len(self.values), self.position + min(records_max, self.chunk))
        offsets = list(range(self.position, end))
        self.position = end
        if not offsets:
            time.sleep(0.02)
        values = self.values[offsets[0] : end] if offsets else []
        return Messages(values, [TOPIC] * len(offsets), [0] * len(offsets), offsets)

    def file_positions(self, messages: Messages) -> list:
        return []

    def lag(self) -> dict[tuple[str, int], int]:
        return {}

    def connected(self) -> bool:
        return True

    def close(self) -> None:
        pass


def _rows(lake: Path) -> list:
    with Ledger.open_read_only(lake) as ledger:
        # Every stored column but the append's own id and time, which differ between two ingest runs.
        return ledger.connection.execute(
            "SELECT * EXCLUDE (ingest_batch_id) FROM lake.main.inference_metered UNION ALL BY NAME "
            "SELECT * EXCLUDE (ingest_batch_id, received_at) FROM lake.main.dead_letter ORDER BY ALL"
        ).fetchall()


def _live_files(ledger: Ledger) -> int:
    return ledger.connection.execute(
        "SELECT count(*) FROM ducklake_list_files('lake', 'inference_metered')"
    ).fetchone()[0]


def _service(ledger: Ledger, source: QuietAfterSource, **options) -> IngestService:
    # batch_latency 1 ms: every poll of `chunk` messages becomes its own append (its own small files).
    return IngestService(ledger, lambda _: source, "USDC", 50_000, 1, "idle-test", **options)


def test_a_quiet_source_lets_ingest_compact_once_per_quiet_spell_and_the_rows_stay_the_same(tmp_path):
    messages = sample_messages(400)
    calls: list[CompactionReport] = []

    def counting_compact(ledger: Ledger) -> CompactionReport:
        calls.append(compact(ledger))
        return calls[-1]

    lake = tmp_path / "lake"
    with Ledger.open(lake) as ledger:
        source = QuietAfterSource(messages[:300], chunk=40)
        service = _service(ledger, source, compact_when_idle_s=1.0, compact=counting_compact)
        service.run(until_idle_s=3.0)  # quiet for 3 s: one compaction at 1 s, not one per poll
        assert len(calls) == 1 and calls[0].files_retired > 0, calls
        files_after_first = _live_files(ledger)
    plain = tmp_path / "plain"
    with Ledger.open(plain) as ledger:
        # Quiet for 2 s before it stops: under load one append can outlast a shorter spell, and the twin would stop
        # before the source is empty (seen once in a loaded run: the rows then differ).
        _service(ledger, QuietAfterSource(messages[:300], chunk=40)).run(until_idle_s=2.0)
        assert _live_files(ledger) > files_after_first  # the uncompacted twin keeps its small files
    assert _rows(lake) == _rows(plain)
    with Ledger.open(lake) as ledger:
        source = QuietAfterSource(messages, chunk=40)
        service = _service(ledger, source, compact_when_idle_s=1.0, compact=counting_compact)
        service.run(until_idle_s=3.0)  # a second busy spell, then quiet again: compacts again
        assert len(calls) == 2
        report = verify(ledger)
    assert report.ok, report.problems
    with Ledger.open(plain) as ledger:
        _service(ledger, QuietAfterSource(messages, chunk=40)).run(until_idle_s=2.0)
    assert _rows(lake) == _rows(plain)


def test_a_failing_idle_compaction_is_logged_and_counted_and_ingest_carries_on(tmp_path, caplog):
    def busy_compact(ledger: Ledger) -> CompactionReport:
        raise LedgerBusyError("lake", 3, "database is locked")

    messages = sample_messages(100)
    with Ledger.open(tmp_path / "lake") as ledger:
        service = _service(ledger, QuietAfterSource(messages, chunk=50), compact_when_idle_s=0.2, compact=busy_compact)
        with caplog.at_level(logging.WARNING, logger="royalty.ingest"):
            summary = service.run(until_idle_s=1.0)
    assert summary.messages == len(messages)
    assert service.metrics.value("royalty_ingest_compaction_failures_total") == 1
    assert any("compaction when idle failed" in record.getMessage() for record in caplog.records)


def test_compaction_when_idle_is_off_by_default(tmp_path):
    def never(ledger: Ledger) -> CompactionReport:
        raise AssertionError("compacted although compact_when_idle_s is 0")

    with Ledger.open(tmp_path / "lake") as ledger:
        service = _service(ledger, QuietAfterSource(sample_messages(60), chunk=30), compact=never)
        service.run(until_idle_s=0.6)
    assert service.metrics.value("royalty_ingest_compactions_total") == 0
    assert service.metrics.value("royalty_ingest_expiries_total") == 0


def test_a_failing_idle_expiry_is_logged_and_counted_and_ingest_carries_on(tmp_path, caplog):
    def busy_expire(ledger: Ledger, older_than_s: float) -> ExpiryReport:
        raise LedgerBusyError("lake", 3, "database is locked")

    messages = sample_messages(100)
    with Ledger.open(tmp_path / "lake") as ledger:
        service = _service(ledger, QuietAfterSource(messages, chunk=50), expire_when_idle_s=0.2, expire=busy_expire)
        with caplog.at_level(logging.WARNING, logger="royalty.ingest"):
            summary = service.run(until_idle_s=1.0)
    assert summary.messages == len(messages)
    assert service.metrics.value("royalty_ingest_expiry_failures_total") == 1
    assert service.metrics.value("royalty_ingest_expiries_total") == 0
    assert any("snapshot expiry when idle failed" in record.getMessage() for record in caplog.records)
