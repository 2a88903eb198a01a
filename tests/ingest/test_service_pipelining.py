"""The ingest service appends one batch on its worker thread while it reads the next, without bending exactly-once.

A scripted source and an in-memory ledger (with the real ledger's offsets fence) stand in for
Kafka and DuckLake, so that the tests can hold an append mid-way, fence a batch as stale, and
stop the service at chosen moments.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from ingest.service import IngestService
from ingest.sources import Messages
from ledger import AppendResult, IngestBatch, LedgerOffsetsFencedError, PartitionOffsets

TOPIC = "events"
# Bound on waiting for the worker thread in a test; generous for a busy 2-core machine.
WAIT_S_MAX = 30


class ScriptedSource:
    """Partition 0 of a topic holding `total` messages; `poll` returns up to `chunk` of them in order."""

    def __init__(self, total: int, chunk: int) -> None:
        self.total, self.chunk = total, chunk
        self.position = 0
        self.seeks: list[int] = []
        self.polls_during_append = 0
        self.ledger: MemoryLedger | None = None

    def seek(self, stored_offsets: dict[tuple[str, int], int]) -> None:
        self.position = stored_offsets.get((TOPIC, 0), 0)
        self.seeks.append(self.position)

    def poll(self, records_max: int, timeout_ms: int, bytes_max: int | None = None) -> Messages:
        if self.ledger is not None and self.ledger.appending.is_set():
            self.polls_during_append += 1
        end = min(self.total, self.position + min(records_max, self.chunk))
        offsets = list(range(self.position, end))
        self.position = end
        if not offsets:
            time.sleep(0.01)
        return Messages([b"{}"] * len(offsets), [TOPIC] * len(offsets), [0] * len(offsets), offsets)

    def lag(self) -> dict[tuple[str, int], int]:
        return {}

    def connected(self) -> bool:
        return True

    def close(self) -> None:
        pass


class MemoryLedger:
    """Stores offsets per batch as the real ledger does, with its fence; `hold` pauses appends mid-way."""

    def __init__(self, append_s: float = 0.0) -> None:
        self.append_s = append_s
        self.batches: list[list[int]] = []
        self.next_offset: dict[tuple[str, int], int] = {}
        self.appending = threading.Event()
        self.hold = threading.Event()
        self.hold.set()
        self.before_append: Callable[[], None] | None = None

    def stored_offsets(self) -> dict[tuple[str, int], int]:
        return dict(self.next_offset)

    def append(
        self, batch: IngestBatch, offsets: list[PartitionOffsets], writer: str = "", file_positions: tuple = ()
    ) -> AppendResult:
        self.appending.set()
        try:
            if self.before_append is not None:
                self.before_append()
            assert self.hold.wait(WAIT_S_MAX)
            time.sleep(self.append_s)
            for item in offsets:
                stored = self.next_offset.get((item.topic, item.partition), 0)
                if stored > item.first_offset:
                    raise LedgerOffsetsFencedError(item.topic, item.partition, stored, item.first_offset)
            self.batches.append(batch.offsets.to_pylist())
            for item in offsets:
                self.next_offset[(item.topic, item.partition)] = item.next_offset
            return AppendResult(len(self.batches), "batch", 0, 0, len(batch.values))
        finally:
            self.appending.clear()


def service_for(ledger: MemoryLedger, source: ScriptedSource, batch_records_max: int) -> IngestService:
    source.ledger = ledger
    return IngestService(ledger, lambda _: source, "USDC", batch_records_max, 60_000, "test")  # type: ignore[arg-type]


def stop_when(service: IngestService, condition: Callable[[], bool]) -> None:
    def watch() -> None:
        deadline_s = time.monotonic() + WAIT_S_MAX
        while not condition() and time.monotonic() < deadline_s:
            time.sleep(0.005)
        service.request_stop()

    threading.Thread(target=watch, daemon=True).start()


def test_batches_commit_in_order_each_offset_once_while_the_next_one_is_read() -> None:
    """Pins the pipelining: reads go on during appends, yet every offset is committed once, in order."""
    ledger, source = MemoryLedger(append_s=0.02), ScriptedSource(total=5_000, chunk=100)
    service = service_for(ledger, source, batch_records_max=500)
    stop_when(service, lambda: ledger.next_offset.get((TOPIC, 0)) == 5_000)
    summary = service.run()
    assert [offset for batch in ledger.batches for offset in batch] == list(range(5_000))
    assert summary.messages == 5_000 and summary.dead_letters == 5_000 and summary.batches == len(ledger.batches)
    assert source.polls_during_append > 0


def test_stop_commits_the_batch_in_flight_and_the_messages_read_since() -> None:
    """Pins SIGTERM: `run` returns only after the in-flight append and the pending messages are committed."""
    ledger, source = MemoryLedger(), ScriptedSource(total=2_000, chunk=100)
    ledger.hold.clear()  # the first batch stays in flight until the stop request
    service = service_for(ledger, source, batch_records_max=300)

    def release_when_stopping() -> None:
        deadline_s = time.monotonic() + WAIT_S_MAX
        while source.position < 600 and time.monotonic() < deadline_s:
            time.sleep(0.005)
        service.request_stop()
        ledger.hold.set()

    threading.Thread(target=release_when_stopping, daemon=True).start()
    summary = service.run()
    committed = [offset for batch in ledger.batches for offset in batch]
    assert committed == list(range(source.position))
    assert summary.stopped_by == "signal" and summary.messages == source.position >= 600


def test_a_stale_batch_in_flight_drops_what_was_read_after_it_and_rereads_from_the_ledger() -> None:
    """Pins the fence: another writer stores offsets mid-append; the service re-seeks and loses nothing."""
    ledger, source = MemoryLedger(), ScriptedSource(total=3_000, chunk=100)
    service = service_for(ledger, source, batch_records_max=400)
    fenced = threading.Event()

    def another_writer_takes_over() -> None:
        if not fenced.is_set() and ledger.batches:
            fenced.set()
            ledger.batches.append(list(range(400, 1_000)))  # another process committed 400..999
            ledger.next_offset[(TOPIC, 0)] = 1_000
            deadline_s = time.monotonic() + WAIT_S_MAX
            while source.position < 1_200 and time.monotonic() < deadline_s:
                time.sleep(0.005)  # meanwhile the service reads on, past the stale batch

    ledger.before_append = another_writer_takes_over
    stop_when(service, lambda: ledger.next_offset.get((TOPIC, 0)) == 3_000)
    service.run()
    assert [offset for batch in ledger.batches for offset in batch] == list(range(3_000))
    assert service.metrics.fenced_batches_total == 1
    assert source.seeks == [0, 1_000]


def test_flush_waits_for_the_batch_in_flight_then_commits_the_pending_messages() -> None:
    """Pins `flush` (called before partitions are revoked): on return, everything read so far is committed."""
    ledger, source = MemoryLedger(append_s=0.05), ScriptedSource(total=10_000, chunk=100)
    service = service_for(ledger, source, batch_records_max=300)
    flushed_at: list[tuple[int, int]] = []
    original_poll = source.poll

    def poll_then_flush(records_max: int, timeout_ms: int, bytes_max: int | None = None) -> Messages:
        polled = original_poll(records_max, timeout_ms)
        if source.position == 700 and not flushed_at:
            service._pending.extend(polled)  # the service would add them after poll returns
            service.flush()
            flushed_at.append((source.position, ledger.next_offset.get((TOPIC, 0), 0)))
            service.request_stop()
            return Messages()
        return polled

    source.poll = poll_then_flush  # type: ignore[method-assign]
    service.run()
    assert flushed_at == [(700, 700)]
    assert [offset for batch in ledger.batches for offset in batch] == list(range(700))


def test_a_ledger_that_keeps_failing_gives_up_on_stop_with_nothing_committed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pins the failure path on the worker: the error reaches `run`, and the batch was not committed."""
    from ingest.errors import IngestLedgerFailingError
    from ledger import LedgerCatalogUnavailableError

    ledger, source = MemoryLedger(), ScriptedSource(total=1_000, chunk=100)
    service = service_for(ledger, source, batch_records_max=200)

    def failing(*_: object, **__: object) -> AppendResult:
        service.request_stop()
        raise LedgerCatalogUnavailableError("memory", "append", "connection refused")

    monkeypatch.setattr(ledger, "append", failing)
    with pytest.raises(IngestLedgerFailingError):
        service.run()
    assert ledger.batches == [] and ledger.next_offset == {}
