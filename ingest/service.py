"""The ingest service: read batches, decode and validate them, append them with their offsets.

Exactly-once effect: offsets live in the ledger, written in the same transaction as the rows,
and the source is positioned from them on start, on every partition assignment, and after a
batch is refused as stale. Bad input becomes dead letters in the same transaction; it never
stops the service or the good records of its batch.
"""

import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc

from ingest import constants
from ingest.errors import IngestLedgerFailingError
from ingest.metrics import IngestMetrics
from ingest.sources import Messages, Source
from ledger import IngestBatch, Ledger, LedgerError, LedgerOffsetsFencedError, PartitionOffsets
from schemas import BatchDecoder, DecodedBatch, Rejection, SchemaError

log = logging.getLogger("royalty.ingest")


@dataclass
class IngestSummary:
    """What one run of the service did."""

    messages: int = 0
    events: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    batches: int = 0
    elapsed_s: float = 0.0
    stopped_by: str = ""


def reject_foreign_assets(decoded: DecodedBatch, asset: str) -> DecodedBatch:
    """Turn metering events in any asset but the configured one into rejections."""
    metered = decoded.tables.get("inference_metered")
    if metered is None:
        return decoded
    foreign = pc.not_equal(metered.column("asset"), pa.scalar(asset))
    if not pc.any(foreign).as_py():
        return decoded
    rejected = metered.filter(foreign)
    rejections = decoded.rejections + [
        Rejection(index, SchemaError(f"asset `{other}` is not this ledger's asset `{asset}`", "data.asset"))
        for index, other in zip(
            rejected.column("message_index").to_pylist(), rejected.column("asset").to_pylist(), strict=True
        )
    ]
    tables = dict(decoded.tables)
    tables["inference_metered"] = metered.filter(pc.invert(foreign))
    return DecodedBatch(tables, sorted(rejections, key=lambda r: r.index))


class IngestService:
    """One ingest process: a source, a decoder and a ledger, in a loop until stopped."""

    def __init__(
        self,
        ledger: Ledger,
        source_factory: Callable[["IngestService"], Source],
        asset: str,
        batch_records_max: int,
        batch_latency_ms_max: int,
        writer: str,
        metrics: IngestMetrics | None = None,
        on_committed: Callable[[IngestSummary], None] | None = None,
    ) -> None:
        assert 0 < batch_records_max <= constants.batch_records_limit, batch_records_max
        self.ledger = ledger
        self.asset = asset
        self.batch_records_max = batch_records_max
        self.batch_latency_s_max = batch_latency_ms_max / 1000
        self.writer = writer
        self.metrics = metrics or IngestMetrics()
        self.decoder = BatchDecoder()
        self.summary = IngestSummary()
        self._on_committed = on_committed
        self._pending = Messages()
        self._pending_since = 0.0
        self._stopping = False
        # A batch the service gave up on inside a rebalance callback, where the consumer swallows
        # exceptions; `run` raises it so the process exits non-zero instead of 0.
        self._failure: IngestLedgerFailingError | None = None
        self.source = source_factory(self)

    # Lifecycle -----------------------------------------------------------------------------

    def request_stop(self, *_: object) -> None:
        """Finish the in-flight batch, commit it and return from `run` (SIGTERM/SIGINT)."""
        self._stopping = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)

    def run(self, until_idle_s: float | None = None) -> IngestSummary:
        started = time.monotonic()
        last_message = time.monotonic()
        last_progress = time.monotonic()
        progress_messages = 0
        was_connected = True
        backoff_s = constants.broker_backoff_s_min
        self.source.seek(self.ledger.stored_offsets())
        while not self._stopping:
            if self._failure is not None:
                raise self._failure
            room = self.batch_records_max - len(self._pending)
            polled = self.source.poll(min(room, constants.poll_records_max), constants.poll_timeout_ms_max)
            now = time.monotonic()
            if polled:
                if not self._pending:
                    self._pending_since = now
                self._pending.extend(polled)
                last_message = now
                backoff_s = constants.broker_backoff_s_min
            if self._pending and (
                len(self._pending) >= self.batch_records_max or now - self._pending_since >= self.batch_latency_s_max
            ):
                self.flush()
            if not polled:
                connected = self.source.connected()
                if not connected:
                    if was_connected:
                        self.metrics.broker_outages_total += 1
                        log.warning("kafka broker unreachable; the service keeps retrying")
                    time.sleep(backoff_s)
                    backoff_s = min(constants.broker_backoff_s_max, backoff_s * 2)
                elif not was_connected:
                    log.info("kafka broker reachable again; resuming")
                    backoff_s = constants.broker_backoff_s_min
                was_connected = connected
                if until_idle_s is not None and not self._pending and now - last_message >= until_idle_s:
                    self.summary.stopped_by = f"idle for {until_idle_s:g} s"
                    break
            if now - last_progress >= constants.progress_log_interval_s:
                self._log_progress(now - last_progress, self.summary.messages - progress_messages)
                last_progress, progress_messages = now, self.summary.messages
        if self._pending:
            self.flush()
        if self._failure is not None:
            raise self._failure
        if not self.summary.stopped_by:
            self.summary.stopped_by = "signal"
        self.summary.elapsed_s = time.monotonic() - started
        self.source.close()
        log.info("ingest stopped", extra={"stopped_by": self.summary.stopped_by, **_counts(self.summary)})
        return self.summary

    # Batches -------------------------------------------------------------------------------

    def flush(self) -> None:
        """Append the pending messages with their offsets; on a stale batch, re-read from the ledger's offsets.

        While the ledger fails (catalog unreachable, storage failing, busy) the same batch is retried
        with backoff; on a stop request or after `constants.ledger_failing_s_max` the service gives up
        with `IngestLedgerFailingError`: nothing of the batch was committed, so nothing is lost.
        """
        messages, self._pending = self._pending, Messages()
        if not messages:
            return
        read_at = self._pending_since
        decoded = reject_foreign_assets(self.decoder.decode(messages.values), self.asset)
        batch = IngestBatch(
            messages.values,
            pa.array(messages.topics, pa.string()),
            pa.array(messages.partitions, pa.int32()),
            pa.array(messages.offsets, pa.int64()),
            decoded,
            datetime.now(UTC),
        )
        offsets = _partition_offsets(messages)
        backoff_s = constants.ledger_backoff_s_min
        failing_since: float | None = None
        while True:
            try:
                result = self.ledger.append(batch, offsets, writer=self.writer)
                break
            except LedgerOffsetsFencedError as error:
                self.metrics.fenced_batches_total += 1
                log.warning("batch refused as stale; re-reading from the ledger's offsets", extra={"error": str(error)})
                self.source.seek(self.ledger.stored_offsets())
                return
            except LedgerError as error:
                # The batch is not lost: nothing was committed, and it is retried as it is.
                now = time.monotonic()
                if failing_since is None:
                    failing_since = now
                    self.metrics.ledger_outages_total += 1
                failing_s = now - failing_since
                log.error(
                    f"{error.failing}; retrying the same batch",
                    extra={"error": str(error), "failing_s": round(failing_s, 1), "retry_in_s": backoff_s},
                )
                if self._stopping or failing_s + backoff_s > constants.ledger_failing_s_max:
                    why = "on request" if self._stopping else f"after {constants.ledger_failing_s_max:g} s of retries"
                    self._failure = IngestLedgerFailingError(why, len(messages), failing_s, error)
                    raise self._failure from error
                self._sleep_unless_stopping(backoff_s)
                backoff_s = min(constants.ledger_backoff_s_max, backoff_s * 2)
        if failing_since is not None:
            failed_for_s = round(time.monotonic() - failing_since, 1)
            log.warning("ledger available again; resuming", extra={"failed_for_s": failed_for_s})
        latency_s = time.monotonic() - read_at
        self.metrics.observe_batch_latency(latency_s)
        self.metrics.messages_total += len(messages)
        self.metrics.events_total += result.events
        self.metrics.duplicates_total += result.duplicates
        self.metrics.dead_letters_total += result.dead_letters
        self.metrics.batches_total += 1
        self.summary.messages += len(messages)
        self.summary.events += result.events
        self.summary.duplicates += result.duplicates
        self.summary.dead_letters += result.dead_letters
        self.summary.batches += 1
        commit = getattr(self.source, "commit_informational", None)
        if commit is not None:
            commit({(o.topic, o.partition): o.next_offset for o in offsets})
        log.debug(
            "batch committed",
            extra={"snapshot_id": result.snapshot_id, "messages": len(messages), "latency_s": round(latency_s, 3)},
        )
        if self._on_committed is not None:
            self._on_committed(self.summary)

    def _sleep_unless_stopping(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopping and time.monotonic() < deadline:
            time.sleep(min(constants.stop_check_s, max(0.0, deadline - time.monotonic())))

    def _log_progress(self, interval_s: float, messages: int) -> None:
        self.metrics.records_per_s = messages / interval_s if interval_s > 0 else 0.0
        lags = self.source.lag()
        self.metrics.lag_by_partition = lags
        log.info(
            "ingest progress",
            extra={
                "records_per_s": round(self.metrics.records_per_s),
                "lag_total": sum(lags.values()),
                **_counts(self.summary),
            },
        )


def _partition_offsets(messages: Messages) -> list[PartitionOffsets]:
    first: dict[tuple[str, int], int] = {}
    last: dict[tuple[str, int], int] = {}
    for topic, partition, offset in zip(messages.topics, messages.partitions, messages.offsets, strict=True):
        key = (topic, partition)
        if key not in first or offset < first[key]:
            first[key] = offset
        if key not in last or offset > last[key]:
            last[key] = offset
    return [PartitionOffsets(t, p, first[(t, p)], last[(t, p)] + 1) for (t, p) in sorted(first)]


def _counts(summary: IngestSummary) -> dict[str, int]:
    return {
        "messages": summary.messages,
        "events": summary.events,
        "duplicates": summary.duplicates,
        "dead_letters": summary.dead_letters,
        "batches": summary.batches,
    }
