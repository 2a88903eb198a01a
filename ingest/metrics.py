"""Prometheus metrics of the ingest service (prometheus_client), served on `--metrics-port`.

Each service has a registry of its own (not the library's global one), so several services in one
process (tests, the demo) keep their figures apart. Only the service's main thread updates them; the
HTTP server thread only reads.
"""

from collections.abc import Mapping
from http.server import ThreadingHTTPServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    start_http_server,
)

# The `_created` timestamps are read as separate untyped families from the text format Prometheus scrapes,
# and nothing here uses them.
disable_created_metrics()

# Upper bounds of the batch latency histogram buckets, in seconds.
latency_buckets_s = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_prefix = "royalty_ingest"


class IngestMetrics:
    """Counters, gauges and the batch latency histogram of one ingest process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)

        def counter(name: str, help_text: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(f"{_prefix}_{name}", help_text, labels, registry=self.registry)

        self._messages = counter("messages", "Messages read.")
        self._events = counter("events", "Events stored.")
        self._duplicates = counter("duplicates", "Exact duplicates dropped.")
        self._dead_letters = counter("dead_letters", "Dead letters stored.")
        self._dead_letters_by_reason = counter(
            "dead_letters_by_reason", "Dead letters stored, by reason_code (schemas.reason_codes).", ("reason_code",)
        )
        self._batches = counter("batches", "Ledger appends.")
        self._fenced = counter("fenced_batches", "Batches refused as stale.")
        self._broker_outages = counter("broker_outages", "Times the broker became unreachable.")
        self._ledger_outages = counter(
            "ledger_outages", "Times an append failed and was retried (catalog unreachable, storage failing, busy)."
        )
        self._append_retries = counter("append_retries", "Appends of a batch retried after a transient failure.")
        self._compactions = counter("compactions", "Compactions run when the source was idle.")
        self._compaction_failures = counter("compaction_failures", "Idle compactions that failed (retried later).")
        self._files_compacted = counter("files_compacted", "Data files retired by idle compactions.")
        self._expiries = counter("expiries", "Snapshot expiries run when the source was idle.")
        self._expiry_failures = counter("expiry_failures", "Idle snapshot expiries that failed (retried later).")
        self._snapshots_expired = counter("snapshots_expired", "Snapshots expired by idle expiries.")
        self._records_per_s = Gauge(
            f"{_prefix}_records_per_second", "Recent ingest rate (messages a second).", registry=self.registry
        )
        self._lag = Gauge(
            f"{_prefix}_consumer_lag",
            "Messages behind the end of each partition.",
            ("topic", "partition"),
            registry=self.registry,
        )
        self._latency = Histogram(
            f"{_prefix}_batch_latency_seconds",
            "Read-to-commit time of a batch.",
            buckets=latency_buckets_s,
            registry=self.registry,
        )

    # Updates (the service's main thread) -------------------------------------------------------

    def batch_committed(
        self,
        messages: int,
        events: int,
        duplicates: int,
        dead_letters: int,
        dead_letters_by_reason: Mapping[str, int],
        latency_s: float,
    ) -> None:
        self._messages.inc(messages)
        self._events.inc(events)
        self._duplicates.inc(duplicates)
        self._dead_letters.inc(dead_letters)
        for reason_code, count in dead_letters_by_reason.items():
            self._dead_letters_by_reason.labels(reason_code).inc(count)
        self._batches.inc()
        self._latency.observe(latency_s)

    def batch_fenced(self) -> None:
        self._fenced.inc()

    def broker_outage(self) -> None:
        self._broker_outages.inc()

    def ledger_outage(self) -> None:
        self._ledger_outages.inc()

    def append_retried(self) -> None:
        self._append_retries.inc()

    def compacted(self, files_retired: int) -> None:
        self._compactions.inc()
        self._files_compacted.inc(files_retired)

    def compaction_failed(self) -> None:
        self._compaction_failures.inc()

    def expired(self, snapshots: int) -> None:
        self._expiries.inc()
        self._snapshots_expired.inc(snapshots)

    def expiry_failed(self) -> None:
        self._expiry_failures.inc()

    def progress(self, records_per_s: float, lag_by_partition: Mapping[tuple[str, int], int]) -> None:
        self._records_per_s.set(records_per_s)
        self._lag.clear()  # partitions revoked since the last report are no longer this process's
        for (topic, partition), lag in sorted(lag_by_partition.items()):
            self._lag.labels(topic, str(partition)).set(lag)

    # Reading -----------------------------------------------------------------------------------

    def value(self, sample: str, labels: Mapping[str, str] | None = None) -> float:
        """The current value of one sample (`royalty_ingest_events_total`), 0 if it has none yet."""
        found = self.registry.get_sample_value(sample, dict(labels or {}))
        return 0.0 if found is None else found

    @property
    def fenced_batches_total(self) -> int:
        return int(self.value(f"{_prefix}_fenced_batches_total"))

    @property
    def records_per_s(self) -> float:
        return self.value(f"{_prefix}_records_per_second")

    def render(self) -> str:
        """The exposition text Prometheus scrapes."""
        return generate_latest(self.registry).decode()


def serve_metrics(metrics: IngestMetrics, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Serve `metrics` at http://host:port/metrics from a daemon thread (prometheus_client's server)."""
    server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    return server
