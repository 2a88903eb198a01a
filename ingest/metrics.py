"""Prometheus metrics of the ingest service, served as text on `--metrics-port`."""

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Upper bounds of the batch latency histogram buckets, in seconds.
latency_buckets_s = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class IngestMetrics:
    """Counters and gauges of one ingest process. Updated by the service thread only."""

    messages_total: int = 0
    events_total: int = 0
    duplicates_total: int = 0
    dead_letters_total: int = 0
    batches_total: int = 0
    fenced_batches_total: int = 0
    broker_outages_total: int = 0
    ledger_outages_total: int = 0
    batch_latency_s_buckets: list[int] = field(default_factory=lambda: [0] * (len(latency_buckets_s) + 1))
    batch_latency_s_sum: float = 0.0
    records_per_s: float = 0.0
    lag_by_partition: dict[tuple[str, int], int] = field(default_factory=dict)

    def observe_batch_latency(self, seconds: float) -> None:
        index = next((i for i, bound in enumerate(latency_buckets_s) if seconds <= bound), len(latency_buckets_s))
        self.batch_latency_s_buckets[index] += 1
        self.batch_latency_s_sum += seconds

    def render(self) -> str:
        lines = []

        def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(f"{name}{labels} {value}" for labels, value in samples)

        metric("royalty_ingest_messages_total", "counter", "Messages read.", [("", self.messages_total)])
        metric("royalty_ingest_events_total", "counter", "Events stored.", [("", self.events_total)])
        metric("royalty_ingest_duplicates_total", "counter", "Exact duplicates dropped.", [("", self.duplicates_total)])
        metric("royalty_ingest_dead_letters_total", "counter", "Dead letters stored.", [("", self.dead_letters_total)])
        metric("royalty_ingest_batches_total", "counter", "Ledger appends.", [("", self.batches_total)])
        metric(
            "royalty_ingest_fenced_batches_total",
            "counter",
            "Batches refused as stale.",
            [("", self.fenced_batches_total)],
        )
        metric(
            "royalty_ingest_broker_outages_total",
            "counter",
            "Times the broker became unreachable.",
            [("", self.broker_outages_total)],
        )
        metric(
            "royalty_ingest_ledger_outages_total",
            "counter",
            "Times an append failed and was retried (catalog unreachable, storage failing, busy).",
            [("", self.ledger_outages_total)],
        )
        metric("royalty_ingest_records_per_second", "gauge", "Recent ingest rate.", [("", self.records_per_s)])
        cumulative, buckets = 0, []
        for bound, count in zip([*latency_buckets_s, float("inf")], self.batch_latency_s_buckets, strict=True):
            cumulative += count
            buckets.append((f'{{le="{"+Inf" if bound == float("inf") else bound}"}}', cumulative))
        metric("royalty_ingest_batch_latency_seconds_bucket", "histogram", "Read-to-commit time of a batch.", buckets)
        lines.append(f"royalty_ingest_batch_latency_seconds_sum {self.batch_latency_s_sum}")
        lines.append(f"royalty_ingest_batch_latency_seconds_count {cumulative}")
        metric(
            "royalty_ingest_consumer_lag",
            "gauge",
            "Messages behind the end of each partition.",
            [
                (f'{{topic="{topic}",partition="{partition}"}}', lag)
                for (topic, partition), lag in sorted(self.lag_by_partition.items())
            ],
        )
        return "\n".join(lines) + "\n"


def serve_metrics(metrics: IngestMetrics, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Serve `metrics` at http://host:port/metrics from a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.rstrip("/") not in ("", "/metrics"):
                self.send_error(404)
                return
            body = metrics.render().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
