"""The ingest service: read batches, decode and validate them, append them with their offsets.

Exactly-once effect: offsets live in the ledger, written in the same transaction as the rows,
and the source is positioned from them on start, on every partition assignment, and after a
batch is refused as stale. Bad input becomes dead letters in the same transaction; it never
stops the service or the good records of its batch.

One batch at a time is decoded and appended on a worker thread while the main thread reads the
next one from the source: DuckDB and Parquet release the GIL, and the broker's fetch round trips
overlap with the append. The source is only ever touched by the main thread, and a batch's
results (metrics, callbacks, a stale batch's re-seek) are taken in on the main thread too.
"""

import logging
import signal
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from ingest import constants
from ingest.errors import IngestConfigError, IngestLedgerFailingError
from ingest.metrics import IngestMetrics
from ingest.sources import Messages, Source
from ledger import AppendResult, IngestBatch, Ledger, LedgerError, LedgerOffsetsFencedError, PartitionOffsets
from ledger.batch import FileSourcePosition
from ledger.compaction import CompactionReport
from ledger.compaction import compact as compact_ledger
from ledger.constants import expire_older_than_s_default
from ledger.expiry import ExpiryReport
from ledger.expiry import expire as expire_ledger
from schemas import BatchDecoder, DecodedBatch, Rejection, SchemaError, limits
from schemas.decoder import utc_now
from schemas.reason_codes import ReasonCode

_Report = TypeVar("_Report", CompactionReport, ExpiryReport)

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
        Rejection(
            index,
            SchemaError(
                f"asset `{other}` is not this ledger's asset `{asset}`", "data.asset", ReasonCode.asset_not_accepted
            ),
        )
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
        batch_bytes_max: int = constants.batch_bytes_max_default,
        event_time_future_s_max: int = limits.event_time_future_s_max_default,
        clock: Callable[[], datetime] = utc_now,
        compact_when_idle_s: float = 0.0,
        compact: Callable[[Ledger], CompactionReport] = compact_ledger,
        expire_when_idle_s: float = 0.0,
        expire_older_than_s: float = expire_older_than_s_default,
        expire: Callable[[Ledger, float], ExpiryReport] = expire_ledger,
    ) -> None:
        if not 0 < batch_records_max <= constants.batch_records_max_limit:
            raise IngestConfigError(
                f"batch_records_max={batch_records_max} is outside 1..{constants.batch_records_max_limit}"
            )
        self.ledger = ledger
        self.asset = asset
        self.batch_records_max = batch_records_max
        if not 0 < batch_bytes_max <= constants.batch_bytes_max_limit:
            raise IngestConfigError(
                f"batch_bytes_max={batch_bytes_max} is outside 1..{constants.batch_bytes_max_limit}"
            )
        # A batch stops at this many bytes of messages as well as at `batch_records_max` messages: it
        # is held in memory about four times over (raw, decoded, Arrow, Parquet), twice while one appends.
        self.batch_bytes_max = batch_bytes_max
        self.batch_latency_s_max = batch_latency_ms_max / 1000
        self.writer = writer
        self.metrics = metrics or IngestMetrics()
        # `clock` is the ingest clock event times are checked against (tests inject one).
        self.decoder = BatchDecoder(event_time_future_s_max=event_time_future_s_max, clock=clock)
        if self.decoder.native:
            log.info("json decoder: native (schemas._fastjson), then msgspec and pydantic for what it leaves")
        else:
            log.warning("json decoder: msgspec and pydantic only (schemas._fastjson not built), a slower decode")
        self.summary = IngestSummary()
        self._on_committed = on_committed
        self._pending = Messages()
        self._pending_since = 0.0
        self._stopping = False
        # The batch being appended on the worker thread, if any: at most one, so that batches
        # commit in the order they were read.
        self._appender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-append")
        self._in_flight: Future[_Appended] | None = None
        # A batch the service gave up on inside a rebalance callback, where the consumer swallows
        # exceptions; `run` raises it so the process exits non-zero instead of 0.
        self._failure: IngestLedgerFailingError | None = None
        # Compaction (ledger.compaction) once the source has been quiet this long, once per quiet spell; 0: never.
        # It runs on the append worker, so it never overlaps this process's appends.
        self.compact_when_idle_s = compact_when_idle_s
        self._compact = compact
        # Snapshot expiry (ledger.expiry) under the same rule, after the compaction when both are due (so the files
        # it retired are dropped by the expiry); snapshots younger than `expire_older_than_s` are kept.
        self.expire_when_idle_s = expire_when_idle_s
        self.expire_older_than_s = expire_older_than_s
        self._expire = expire
        # The idle tasks ("compaction", "expiry") already run in the current quiet spell.
        self._done_this_quiet_spell: set[str] = set()
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
        self.source.seek(self.ledger.stored_offsets())
        try:
            self._run_loop(until_idle_s)
        finally:
            self._appender.shutdown(wait=True)
        self.summary.elapsed_s = time.monotonic() - started
        self.source.close()
        log.info("ingest stopped", extra={"stopped_by": self.summary.stopped_by, **_counts(self.summary)})
        return self.summary

    def _run_loop(self, until_idle_s: float | None) -> None:
        last_message = time.monotonic()
        last_progress = time.monotonic()
        progress_messages = 0
        was_connected = True
        backoff_s = constants.broker_backoff_s_min
        while not self._stopping:
            if self._failure is not None:
                raise self._failure
            if self._in_flight is not None and self._in_flight.done():
                self._take_in_flight()
            room = self.batch_records_max - len(self._pending)
            bytes_room = max(0, self.batch_bytes_max - self._pending.size_bytes)
            polled = self.source.poll(min(room, constants.poll_records_max), constants.poll_timeout_ms_max, bytes_room)
            now = time.monotonic()
            if polled:
                if not self._pending:
                    self._pending_since = now
                self._pending.extend(polled)
                last_message = now
                self._done_this_quiet_spell.clear()
                backoff_s = constants.broker_backoff_s_min
            if self._pending and (
                len(self._pending) >= self.batch_records_max
                or self._pending.size_bytes >= self.batch_bytes_max
                or now - self._pending_since >= self.batch_latency_s_max
            ):
                self._flush_in_background()
            if not polled:
                connected = self.source.connected()
                if not connected:
                    if was_connected:
                        self.metrics.broker_outage()
                        log.warning("kafka broker unreachable; the service keeps retrying")
                    time.sleep(backoff_s)
                    backoff_s = min(constants.broker_backoff_s_max, backoff_s * 2)
                elif not was_connected:
                    log.info("kafka broker reachable again; resuming")
                    backoff_s = constants.broker_backoff_s_min
                was_connected = connected
                self._maintain_if_idle(now - last_message)
                if until_idle_s is not None and not self._pending and now - last_message >= until_idle_s:
                    self.summary.stopped_by = f"idle for {until_idle_s:g} s"
                    break
            if now - last_progress >= constants.progress_log_interval_s:
                self._log_progress(now - last_progress, self.summary.messages - progress_messages)
                last_progress, progress_messages = now, self.summary.messages
        self.flush()
        if self._failure is not None:
            raise self._failure
        if not self.summary.stopped_by:
            self.summary.stopped_by = "signal"

    def _maintain_if_idle(self, quiet_s: float) -> None:
        """On the append worker, once per quiet spell each: compact once the source has been quiet
        `compact_when_idle_s`, expire snapshots once quiet `expire_when_idle_s` (compaction first when both are due:
        the worker runs them in order)."""
        if self._pending:
            return
        for task, idle_s, work in (
            ("compaction", self.compact_when_idle_s, self._compact_logging_failures),
            ("expiry", self.expire_when_idle_s, self._expire_logging_failures),
        ):
            if idle_s <= 0 or task in self._done_this_quiet_spell or quiet_s < idle_s:
                continue
            self._done_this_quiet_spell.add(task)
            self._appender.submit(work)

    def _compact_logging_failures(self) -> None:
        """Compact when idle (compaction only makes reads cheaper; a failed one committed nothing)."""
        report = self._idle_maintenance(
            "compaction", lambda: self._compact(self.ledger), self.metrics.compaction_failed
        )
        if report is None:
            return
        self.metrics.compacted(report.files_retired)
        if report.merges or report.skipped:
            log.info(
                "compacted when idle",
                extra={"merges": report.merges, "files_retired": report.files_retired, "rows": report.rows,
                       "skipped_busy": report.skipped},
            )  # fmt: skip

    def _expire_logging_failures(self) -> None:
        """Expire old snapshots when idle (a failed expiry committed nothing)."""
        report = self._idle_maintenance(
            "snapshot expiry", lambda: self._expire(self.ledger, self.expire_older_than_s), self.metrics.expiry_failed
        )
        if report is None:
            return
        self.metrics.expired(report.snapshots_expired)
        if report.snapshots_expired or report.files_deleted or report.rows_flushed:
            log.info(
                "snapshots expired when idle",
                extra={"snapshots_expired": report.snapshots_expired, "snapshots_kept": report.snapshots_retained,
                       "files_dropped": report.files_dropped, "files_deleted": report.files_deleted,
                       "bookkeeping_rows_flushed": report.rows_flushed},
            )  # fmt: skip

    @staticmethod
    def _idle_maintenance(what: str, work: Callable[[], _Report], failed: Callable[[], None]) -> _Report | None:
        """`work`'s report, or None after a failure, logged and counted and left for the next quiet spell: ingest
        carries on."""
        try:
            return work()
        except LedgerError as error:
            failed()
            log.warning(f"{what} when idle failed; retried at the next quiet spell", extra={"error": str(error)})
        except Exception:  # on the worker thread nobody would see it: logged with its traceback, never silent
            failed()
            log.exception(f"{what} when idle failed unexpectedly; retried at the next quiet spell")
        return None

    # Batches -------------------------------------------------------------------------------

    def flush(self) -> None:
        """Append every message read so far with its offsets, and return once it is committed.

        Called on stop and when partitions are about to be revoked. On a stale batch the source is
        re-positioned from the ledger's offsets. While the ledger fails (catalog unreachable, storage
        failing, busy) the same batch is retried with backoff; on a stop request or after
        `constants.ledger_failing_s_max` the service gives up with `IngestLedgerFailingError`:
        nothing of the batch was committed, so nothing is lost.
        """
        self._flush_in_background()
        self._take_in_flight()

    def _flush_in_background(self) -> None:
        """Hand the pending messages to the worker, once the batch before them is committed."""
        self._take_in_flight()
        messages, self._pending = self._pending, Messages()
        if messages:
            # Where a file source got to, taken here: the source belongs to this thread.
            positions = self.source.file_positions(messages) if messages.line_digests else []
            self._in_flight = self._appender.submit(self._append, messages, self._pending_since, positions)

    def _take_in_flight(self) -> None:
        """Wait for the batch on the worker, if any, and account for it on this (the source's) thread."""
        if self._in_flight is None:
            return
        in_flight, self._in_flight = self._in_flight, None
        try:
            appended = in_flight.result()
        except LedgerOffsetsFencedError as error:
            self.metrics.batch_fenced()
            log.warning("batch refused as stale; re-reading from the ledger's offsets", extra={"error": str(error)})
            # Whatever was read after the stale batch continues from a stale position too.
            self._pending = Messages()
            self.source.seek(self.ledger.stored_offsets())
            return
        except IngestLedgerFailingError as error:
            self._failure = error
            raise
        result = appended.result
        self.metrics.batch_committed(
            appended.messages,
            result.events,
            result.duplicates,
            result.dead_letters,
            result.dead_letters_by_reason,
            appended.latency_s,
        )
        self.summary.messages += appended.messages
        self.summary.events += result.events
        self.summary.duplicates += result.duplicates
        self.summary.dead_letters += result.dead_letters
        self.summary.batches += 1
        commit = getattr(self.source, "commit_informational", None)
        if commit is not None:
            commit({(o.topic, o.partition): o.next_offset for o in appended.offsets})
        log.debug(
            "batch committed",
            extra={
                "snapshot_id": result.snapshot_id,
                "messages": appended.messages,
                "latency_s": round(appended.latency_s, 3),
            },
        )
        if self._on_committed is not None:
            self._on_committed(self.summary)

    def _append(
        self, messages: Messages, read_at: float, file_positions: list[FileSourcePosition] | None = None
    ) -> "_Appended":
        """Decode `messages` and append them with their offsets (on the worker thread; never touches the source)."""
        decoded = reject_foreign_assets(self.decoder.decode(messages.values), self.asset)
        batch = IngestBatch(
            messages.values,
            pa.array(messages.topics, pa.string()),
            pa.array(messages.partitions, pa.int32()),
            pa.array(messages.offsets, pa.int64()),
            decoded,
            datetime.now(UTC),
            messages.line_digests,
        )
        offsets = _partition_offsets(batch)
        backoff_s = constants.ledger_backoff_s_min
        failing_since: float | None = None
        while True:
            try:
                result = self.ledger.append(batch, offsets, writer=self.writer, file_positions=file_positions or ())
                break
            except LedgerOffsetsFencedError:
                raise  # not a failing ledger but a stale batch: the main thread re-seeks, no retry
            except LedgerError as error:
                # The batch is not lost: nothing was committed, and it is retried as it is.
                now = time.monotonic()
                if failing_since is None:
                    failing_since = now
                    self.metrics.ledger_outage()
                failing_s = now - failing_since
                if not error.transient:
                    # A bug or a refusal (a binder error, a read-only ledger): retrying the batch cannot cure it.
                    log.error(f"{error.failing}; not retried: the error is not transient", extra={"error": str(error)})
                    raise IngestLedgerFailingError("at once", len(messages), failing_s, error) from error
                log.error(
                    f"{error.failing}; retrying the same batch",
                    extra={"error": str(error), "failing_s": round(failing_s, 1), "retry_in_s": backoff_s},
                )
                if self._stopping or failing_s + backoff_s > constants.ledger_failing_s_max:
                    why = "on request" if self._stopping else f"after {constants.ledger_failing_s_max:g} s of retries"
                    raise IngestLedgerFailingError(why, len(messages), failing_s, error) from error
                self._sleep_unless_stopping(backoff_s)
                self.metrics.append_retried()
                backoff_s = min(constants.ledger_backoff_s_max, backoff_s * 2)
        if failing_since is not None:
            failed_for_s = round(time.monotonic() - failing_since, 1)
            log.warning("ledger available again; resuming", extra={"failed_for_s": failed_for_s})
        return _Appended(len(messages), offsets, result, time.monotonic() - read_at)

    def _sleep_unless_stopping(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopping and time.monotonic() < deadline:
            time.sleep(min(constants.stop_check_s, max(0.0, deadline - time.monotonic())))

    def _log_progress(self, interval_s: float, messages: int) -> None:
        records_per_s = messages / interval_s if interval_s > 0 else 0.0
        lags = self.source.lag()
        self.metrics.progress(records_per_s, lags)
        log.info(
            "ingest progress",
            extra={
                "records_per_s": round(records_per_s),
                "lag_total": sum(lags.values()),
                **_counts(self.summary),
            },
        )


@dataclass(frozen=True)
class _Appended:
    """A batch the worker committed: what the main thread accounts for."""

    messages: int
    offsets: list[PartitionOffsets]
    result: AppendResult
    latency_s: float


def _partition_offsets(batch: IngestBatch) -> list[PartitionOffsets]:
    positions = pa.table({"topic": batch.topics, "partition": batch.partitions, "offset": batch.offsets})
    ranges = positions.group_by(["topic", "partition"]).aggregate([("offset", "min"), ("offset", "max")])
    columns = [ranges.column(name).to_pylist() for name in ("topic", "partition", "offset_min", "offset_max")]
    offsets = [
        PartitionOffsets(topic, partition, first, last + 1)
        for topic, partition, first, last in zip(*columns, strict=True)
    ]
    return sorted(offsets, key=lambda o: (o.topic, o.partition))


def _counts(summary: IngestSummary) -> dict[str, int]:
    return {
        "messages": summary.messages,
        "events": summary.events,
        "duplicates": summary.duplicates,
        "dead_letters": summary.dead_letters,
        "batches": summary.batches,
    }
