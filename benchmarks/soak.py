"""Soak test: `royalty ingest` at a steady rate against a real Kafka broker, memory and latency over time.

A producer thread sends realistic traffic (`ingest.producer.sample_messages`: registry events, then
paid calls with 1% exact duplicates, 0.1% conflicting resends and 1% invalid messages, keyed by
event id) into a fresh 6-partition topic at `--rate` messages/s for `--duration-s` seconds. The real
`royalty ingest` CLI runs as a subprocess with `--metrics-port`; every `--sample-interval-s` the
script reads its RSS from /proc/<pid>/status and scrapes its Prometheus metrics (counters, batch
latency histogram, consumer lag) and computes the uncommitted backlog (messages produced minus
messages committed to the ledger, the lag that matters for recovery). Batch latencies are also
read exactly, one per committed batch, from the service's JSON log (the subprocess is
`royalty.cli.main` with the `royalty.ingest` logger at DEBUG, which adds a "batch committed" line
with `latency_s` per batch; nothing else changes).

When production stops, the service drains the topic, is stopped with SIGTERM, and the ledger is
checked for exactly-once: stored events == distinct valid events produced (each id once), dead
letters == invalid + conflicting messages produced, stored offsets == the topic's end offsets,
and `ledger.verify` passes.

Prints a table per `--report-interval-s` (RSS, events ingested, ingest and produce rates, lag,
batch latency percentiles), first vs last minute RSS (medians of the samples of the first and
the last minute of production) and their ratio, and the verdict. Exits 1 if the ledger is not
exact or the last minute's RSS exceeds the first minute's by more than `--rss-growth-max`
(ratio, default 1.25), or if the service did not catch up or exit cleanly.

    python benchmarks/soak.py --duration-s 180                  # CI-sized: 3 minutes, private broker
    python benchmarks/soak.py --duration-s 3600 --json-out soak.json   # nightly: 1 hour
    python benchmarks/soak.py --bootstrap-servers 127.0.0.1:9092 --rate 5000 --duration-s 600

Without `--bootstrap-servers` it starts a private broker with `scripts/kafka-local` on free
loopback ports in a temporary state directory, and stops it at the end. With it, it creates a
uniquely named topic there (never reuses one).
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402
from kafka.admin import NewTopic  # noqa: E402

from ingest.producer import _event_key, sample_messages  # noqa: E402
from ledger import Ledger, recorder  # noqa: E402
from ledger.verify import verify  # noqa: E402
from schemas.arrow import ledger_schemas  # noqa: E402
from tests.support.kafka_broker import TOPIC_READY_TIMEOUT_S, KafkaBroker, free_loopback_port  # noqa: E402

PARTITIONS = 6
MIB = 1024 * 1024
# The traffic mix of `royalty produce-sample` and the demo, per million metering events.
DUPLICATES_PPM = 10_000
CONFLICTS_PPM = 1_000
INVALID_PPM = 10_000
SEED = 7
# Stopping the service commits its in-flight batch; past this it is stuck.
SERVICE_STOP_TIMEOUT_S = 60
# The subprocess: the real CLI entry point, with per-batch latency lines enabled.
SERVICE_BOOT = (
    "import logging, sys; logging.getLogger('royalty.ingest').setLevel(logging.DEBUG); "
    "from royalty.cli import main; sys.argv[0] = 'royalty'; main()"
)
_sample_line = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


# Measurements ------------------------------------------------------------------------------


@dataclass
class Sample:
    """One periodic reading, `t_s` seconds after production started."""

    t_s: float
    rss_mib: float
    hwm_mib: float
    produced: int
    messages: int
    events: int
    dead_letters: int
    batches: int
    lag: int | None  # the service's consumer lag metric: highwater minus fetch position
    backlog: int  # produced minus committed to the ledger: what a crash would make it re-read
    load_1m: float
    producing: bool


@dataclass
class BatchLine:
    t_s: float
    latency_s: float
    messages: int


@dataclass
class ServiceLog:
    """What the service wrote on stderr: per-batch latencies, lag from progress lines, problems."""

    batches: list[BatchLine] = field(default_factory=list)
    progress_lags: list[tuple[float, int]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=40))


def read_status_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in KiB, from /proc/<pid>/status."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value = line.split(":", 1)
                values[name] = int(value.split()[0])
    return values


def scrape(url: str) -> dict[str, float]:
    """The service's metrics; labelled lag series are summed into `lag_total` (absent before the first report)."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    metrics: dict[str, float] = {}
    for line in text.splitlines():
        match = _sample_line.match(line)
        if not match:
            continue
        name, labels, value = match.group(1), match.group(2) or "", float(match.group(3))
        if name == "royalty_ingest_consumer_lag":
            metrics["lag_total"] = metrics.get("lag_total", 0.0) + value
        elif name == "royalty_ingest_batch_latency_seconds_bucket":
            metrics[f"bucket{labels}"] = value
        else:
            metrics[name] = value
    return metrics


def histogram_quantile(q: float, metrics: dict[str, float]) -> float | None:
    """Prometheus-style quantile of the batch latency histogram (linear within a bucket)."""
    buckets = []
    for key, count in metrics.items():
        if key.startswith("bucket{"):
            bound = key.split('"')[1]
            buckets.append((float("inf") if bound == "+Inf" else float(bound), count))
    buckets.sort()
    if not buckets or buckets[-1][1] == 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / max(count - lower_count, 1e-9)
        lower_bound, lower_count = bound, count
    return lower_bound


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, int(q * len(sorted_values) + 0.999999) - 1))
    return sorted_values[index]


def latency_summary(latencies: list[float]) -> dict[str, float | int | None]:
    ordered = sorted(latencies)
    return {
        "count": len(ordered),
        "p50": percentile(ordered, 0.50),
        "p95": percentile(ordered, 0.95),
        "p99": percentile(ordered, 0.99),
        "max": ordered[-1] if ordered else None,
    }


# Traffic -----------------------------------------------------------------------------------


class SteadyProducer(threading.Thread):
    """Sends the sample traffic at `rate` messages/s until `duration_s` has passed or `stop` is set."""

    def __init__(self, bootstrap_servers: str, topic: str, rate: float, duration_s: float) -> None:
        super().__init__(name="soak-producer", daemon=True)
        self.bootstrap_servers, self.topic, self.rate, self.duration_s = bootstrap_servers, topic, rate, duration_s
        self.counts = {"registry": 0, "event": 0, "duplicate": 0, "conflict": 0, "invalid": 0}
        self.sent = 0
        self.errors: list[str] = []
        self.behind_max = 0  # the most messages the producer was behind its schedule
        self.started_at = 0.0
        self.finished_at = 0.0
        self.done = threading.Event()
        self.stop = threading.Event()

    def _failed(self, error: Exception) -> None:
        self.errors.append(repr(error))

    def run(self) -> None:
        producer = KafkaProducer(
            bootstrap_servers=self.bootstrap_servers.split(","),
            acks="all",
            linger_ms=20,
            batch_size=1024 * 1024,
            max_request_size=8 * 1024 * 1024,
        )
        # More metering events than the run can send; the generator is lazy.
        messages = sample_messages(int(self.rate * self.duration_s) + 1_000, DUPLICATES_PPM, CONFLICTS_PPM,
                                   INVALID_PPM, 20, 200, SEED)
        try:
            self.started_at = time.monotonic()
            deadline = self.started_at + self.duration_s
            while not self.stop.is_set():
                now = time.monotonic()
                if now >= deadline:
                    break
                due = int(self.rate * (now - self.started_at)) + 1
                self.behind_max = max(self.behind_max, due - self.sent)
                while self.sent < due:
                    kind, message = next(messages)
                    producer.send(self.topic, message, key=_event_key(message)).add_errback(self._failed)
                    self.counts[kind] += 1
                    self.sent += 1
                time.sleep(0.01)
            self.finished_at = time.monotonic()
            producer.flush()
        except Exception as error:  # reported, and fails the run
            self.errors.append(f"producer stopped: {error!r}")
        finally:
            producer.close()
            self.done.set()


def create_topic(bootstrap_servers: str, topic: str, partitions: int) -> None:
    """Create the soak's own topic and wait until every partition has a leader."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers.split(","), request_timeout_ms=10_000)
    try:
        admin.create_topics([NewTopic(name=topic, num_partitions=partitions, replication_factor=1)], timeout_ms=10_000)
        deadline = time.monotonic() + TOPIC_READY_TIMEOUT_S
        while not KafkaBroker._topic_has_leaders(admin, topic, partitions):
            if time.monotonic() > deadline:
                raise RuntimeError(f"topic {topic} has no leader for every partition after {TOPIC_READY_TIMEOUT_S} s")
            time.sleep(0.1)
    finally:
        admin.close()


# The service -------------------------------------------------------------------------------


def start_service(
    bootstrap_servers: str, topic: str, lake: Path, metrics_port: int, args: argparse.Namespace
) -> subprocess.Popen[str]:
    command = [
        sys.executable, "-c", SERVICE_BOOT, "ingest",
        "--bootstrap-servers", bootstrap_servers, "--topic", topic, "--lake", str(lake),
        "--metrics-port", str(metrics_port), "--log-format", "json",
        "--batch-records-max", str(args.batch_records_max),
        "--batch-latency-ms-max", str(args.batch_latency_ms_max),
    ]  # fmt: skip
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=environment, cwd=lake.parent)


def follow_log(process: subprocess.Popen[str], log: ServiceLog, log_path: Path) -> None:
    """Parse the service's stderr until it closes, and copy it to `log_path`; times are time.monotonic()."""
    assert process.stderr is not None
    with log_path.open("w") as copy:
        for line in process.stderr:
            copy.write(line)
            line = line.rstrip("\n")
            try:
                entry = json.loads(line)
            except ValueError:
                log.tail.append(line)
                continue
            if not isinstance(entry, dict):
                continue
            t_s = time.monotonic()
            message = entry.get("message")
            if message == "batch committed":
                log.batches.append(BatchLine(t_s, float(entry["latency_s"]), int(entry["messages"])))
            elif message == "ingest progress":
                log.progress_lags.append((t_s, int(entry.get("lag_total", 0))))
            elif entry.get("level") in ("warning", "error", "critical"):
                log.problems.append(line)
            if message != "batch committed":
                log.tail.append(line)


def stop_service(process: subprocess.Popen[str]) -> int | None:
    """SIGTERM (the service commits its in-flight batch), SIGKILL if it does not exit in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=SERVICE_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return None


# The ledger --------------------------------------------------------------------------------


def check_ledger(lake: Path, topic: str, bootstrap_servers: str, producer: SteadyProducer) -> dict[str, Any]:
    """Exactly-once: each distinct valid event stored once, each bad message a dead letter, offsets at the end."""
    expected_events = producer.counts["registry"] + producer.counts["event"]
    expected_dead = producer.counts["invalid"] + producer.counts["conflict"]
    with Ledger.open_read_only(lake) as reader:
        connection = reader.connection
        rows, distinct = 0, 0
        for table in ledger_schemas:
            count, ids = connection.execute(
                f"SELECT count(*), count(DISTINCT event_id) FROM {recorder.table(table)}"
            ).fetchone()
            rows, distinct = rows + count, distinct + ids
        dead, dead_positions = connection.execute(
            "SELECT count(*), count(DISTINCT (kafka_partition, kafka_offset)) "
            f"FROM {recorder.table('dead_letter')}"
        ).fetchone()
        (duplicates,) = connection.execute(
            f"SELECT coalesce(sum(duplicates), 0) FROM {recorder.table('ingest_batch')}"
        ).fetchone()
        stored_offsets = reader.stored_offsets()
        report = verify(reader)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    try:
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in range(PARTITIONS)])
    finally:
        consumer.close()
    end_offsets = {(tp.topic, tp.partition): offset for tp, offset in ends.items() if offset > 0}
    result = {
        "events_stored": rows,
        "events_distinct": distinct,
        "events_expected": expected_events,
        "dead_letters": dead,
        "dead_letters_distinct_positions": dead_positions,
        "dead_letters_expected": expected_dead,
        "duplicates_dropped": int(duplicates),
        "duplicates_produced": producer.counts["duplicate"],
        "offsets_at_end": stored_offsets == end_offsets,
        "verify_ok": report.ok,
        "verify_problems": report.problems[:5],
        "files": report.files,
        "snapshots": report.snapshots,
    }
    result["exact"] = (
        rows == distinct == expected_events
        and dead == dead_positions == expected_dead
        and int(duplicates) == producer.counts["duplicate"]
        and result["offsets_at_end"]
        and report.ok
        and not producer.errors
    )
    return result


# Report ------------------------------------------------------------------------------------


def windows(samples: list[Sample], log: ServiceLog, interval_s: float) -> list[dict[str, Any]]:
    """One row per `interval_s` of the run: RSS, ingested, rates, lag, batch latency percentiles."""
    rows: list[dict[str, Any]] = []
    if not samples:
        return rows
    batch_times = [b.t_s for b in log.batches]
    previous: Sample | None = None
    index = 0
    while index < len(samples):
        start = int(samples[index].t_s // interval_s) * interval_s
        group = []
        while index < len(samples) and samples[index].t_s < start + interval_s:
            group.append(samples[index])
            index += 1
        first_t = previous.t_s if previous else 0.0
        first_messages = previous.messages if previous else 0
        first_produced = previous.produced if previous else 0
        last = group[-1]
        span = max(last.t_s - first_t, 1e-9)
        lo, hi = bisect.bisect_left(batch_times, first_t), bisect.bisect_right(batch_times, last.t_s)
        rows.append(
            {
                "from_s": round(start),
                "to_s": round(start + interval_s),
                "phase": "produce" if any(s.producing for s in group) else "drain",
                "rss_mib_median": round(statistics.median(s.rss_mib for s in group), 1),
                "rss_mib_max": round(max(s.rss_mib for s in group), 1),
                "events_ingested": last.events,
                "messages_ingested": last.messages,
                "ingest_rate": round((last.messages - first_messages) / span),
                "produce_rate": round((last.produced - first_produced) / span),
                "lag_max": max((s.lag for s in group if s.lag is not None), default=None),
                "backlog_max": max(s.backlog for s in group),
                "batches": hi - lo,
                "latency_s": latency_summary([b.latency_s for b in log.batches[lo:hi]]),
                "load_1m": round(max(s.load_1m for s in group), 2),
            }
        )
        previous = last
    return rows


def fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def print_report(summary: dict[str, Any]) -> None:
    print()
    print(f"soak: {summary['config']['duration_s']:g} s at {summary['config']['rate']:,.0f} messages/s, "
          f"{PARTITIONS} partitions, batches <= {summary['config']['batch_records_max']:,} messages / "
          f"{summary['config']['batch_latency_ms_max']} ms")
    machine = summary["machine"]
    print(f"machine: {machine['cores']} cores, {machine['mem_total_gib']:.0f} GiB, load average at start "
          f"{machine['load_start']}, max sampled 1-min load {machine['load_1m_max']:.2f}, at end {machine['load_end']}")
    print()
    header = (f"{'window':>11} {'phase':>7} {'RSS MiB':>8} {'RSS max':>8} {'events':>11} {'ingest/s':>9} "
              f"{'produce/s':>9} {'lag':>5} {'backlog':>8} {'batches':>7} {'p50 s':>6} {'p95 s':>6} {'p99 s':>6} "
              f"{'load':>5}")
    print(header)
    for row in summary["windows"]:
        latency = row["latency_s"]
        print(f"{row['from_s']:>5}-{row['to_s']:<5} {row['phase']:>7} {row['rss_mib_median']:>8.1f} "
              f"{row['rss_mib_max']:>8.1f} {row['events_ingested']:>11,} {row['ingest_rate']:>9,} "
              f"{row['produce_rate']:>9,} {fmt(row['lag_max'], ',d'):>5} {row['backlog_max']:>8,} {row['batches']:>7} "
              f"{fmt(latency['p50'], '.2f'):>6} {fmt(latency['p95'], '.2f'):>6} {fmt(latency['p99'], '.2f'):>6} "
              f"{row['load_1m']:>5.1f}")
    rss, latency, lag, produced = summary["rss"], summary["latency_s"], summary["lag"], summary["produced"]
    print()
    print(f"produced: {produced['messages']:,} messages in {produced['seconds']:.1f} s "
          f"({produced['rate']:,.0f}/s; most behind schedule: {produced['behind_max']:,} messages); "
          + ", ".join(f"{kind}={count:,}" for kind, count in produced["counts"].items()))
    ingest = summary["ingest"]
    print(f"ingested: {ingest['messages']:,} messages, {ingest['events']:,} events, {ingest['batches']:,} batches; "
          f"drained {ingest['drain_s']:.1f} s after production stopped; service exit code {ingest['exit_code']}")
    print(f"RSS: first minute median {rss['first_mib']:.1f} MiB (max {rss['first_max_mib']:.1f}), last minute "
          f"median {rss['last_mib']:.1f} MiB (max {rss['last_max_mib']:.1f}); growth x{rss['growth']:.3f} "
          f"(threshold x{rss['threshold']:.2f}); trend {rss['slope_mib_per_min']:+.2f} MiB/min; "
          f"peak (VmHWM) {rss['hwm_mib']:.1f} MiB")
    print(f"batch latency (read to commit, {latency['count']:,} batches, includes the batching wait of up to "
          f"{summary['config']['batch_latency_ms_max']} ms): p50 {fmt(latency['p50'])} s, p95 {fmt(latency['p95'])} s, "
          f"p99 {fmt(latency['p99'])} s, max {fmt(latency['max'])} s")
    hist = summary["latency_histogram_s"]
    print(f"  from the Prometheus histogram (interpolated): p50 {fmt(hist['p50'])} s, p95 {fmt(hist['p95'])} s, "
          f"p99 {fmt(hist['p99'])} s")
    print(f"lag while producing, summed over partitions: consumer lag metric (highwater - fetch position) "
          f"median {fmt(lag['median'], ',.0f')}, max {fmt(lag['max'], ',.0f')}; uncommitted backlog (produced - "
          f"committed to the ledger) median {fmt(lag['backlog_median'], ',.0f')}, p95 "
          f"{fmt(lag['backlog_p95'], ',.0f')}, max {fmt(lag['backlog_max'], ',.0f')} messages "
          f"(max {lag['backlog_max_s']:.1f} s of traffic)")
    ledger = summary["ledger"]
    if ledger:
        print(f"ledger: {ledger['events_stored']:,} events ({ledger['events_distinct']:,} distinct) vs "
              f"{ledger['events_expected']:,} distinct valid produced; {ledger['dead_letters']:,} dead letters vs "
              f"{ledger['dead_letters_expected']:,} invalid+conflicting produced; {ledger['duplicates_dropped']:,} "
              f"duplicates dropped vs {ledger['duplicates_produced']:,} produced; offsets at the end: "
              f"{ledger['offsets_at_end']}; verify: {ledger['verify_ok']} ({ledger['files']:,} files, "
              f"{ledger['snapshots']:,} snapshots)")
    print()
    print(f"verdict: {summary['verdict']}" + ("" if not summary["failures"] else ": " + "; ".join(summary["failures"])))


# Main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=180.0,
                        help="Seconds of steady production (default 180, CI-sized; nightly: 3600).")
    parser.add_argument("--rate", type=float, default=5_000.0, help="Messages produced per second (default 5000).")
    parser.add_argument("--bootstrap-servers", default=None,
                        help="Use this Kafka; without it a private broker is started and stopped.")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="Where the ledger, the broker state and the service log go (default: a temp dir, "
                             "removed at the end unless --keep).")
    parser.add_argument("--keep", action="store_true", help="Keep the temporary workdir.")
    parser.add_argument("--sample-interval-s", type=float, default=5.0, help="Seconds between RSS/metrics samples.")
    parser.add_argument("--report-interval-s", type=float, default=60.0, help="Seconds per row of the table.")
    parser.add_argument("--rss-growth-max", type=float, default=1.25,
                        help="Fail when last-minute RSS / first-minute RSS exceeds this (default 1.25).")
    parser.add_argument("--catch-up-timeout-s", type=float, default=300.0,
                        help="Longest the service may take to drain the topic after production stops.")
    parser.add_argument("--batch-records-max", type=int, default=50_000)
    parser.add_argument("--batch-latency-ms-max", type=int, default=1_000)
    parser.add_argument("--json-out", type=Path, default=None, help="Write the summary (and all samples) here.")
    return parser.parse_args(argv)


def mem_total_gib() -> float:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    return 0.0


def run(args: argparse.Namespace) -> dict[str, Any]:
    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="soak-")) if temporary else args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    lake = workdir / f"lake-{uuid.uuid4().hex[:8]}"
    topic = f"soak-{datetime.now(UTC):%Y%m%d%H%M%S}-{uuid.uuid4().hex[:6]}"
    broker: KafkaBroker | None = None
    failures: list[str] = []
    load_start = [round(x, 2) for x in os.getloadavg()]
    started_wall = datetime.now(UTC).isoformat(timespec="seconds")
    samples: list[Sample] = []
    log = ServiceLog()
    producer: SteadyProducer | None = None
    process: subprocess.Popen[str] | None = None
    exit_code: int | None = None
    ledger_result: dict[str, Any] = {}
    drain_s = 0.0
    last_metrics: dict[str, float] = {}
    try:
        if args.bootstrap_servers:
            bootstrap_servers = args.bootstrap_servers
        else:
            broker = KafkaBroker(workdir / f"kafka-{uuid.uuid4().hex[:8]}", heap_mb=1024)
            print(f"starting a private Kafka broker in {broker.state_dir} ...", flush=True)
            broker.start()
            bootstrap_servers = broker.bootstrap_servers
        create_topic(bootstrap_servers, topic, PARTITIONS)
        metrics_port = free_loopback_port()
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        print(f"topic {topic} on {bootstrap_servers}; ledger {lake}; metrics {metrics_url}", flush=True)

        lake.mkdir(parents=True)
        process = start_service(bootstrap_servers, topic, lake, metrics_port, args)
        reader = threading.Thread(target=follow_log, args=(process, log, workdir / "ingest.log"),
                                  name="soak-log", daemon=True)
        reader.start()
        # Wait for the metrics endpoint, which the service opens before reading anything.
        deadline = time.monotonic() + 60
        while True:
            try:
                scrape(metrics_url)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the ingest service did not come up:\n" + "\n".join(log.tail)) from None
                time.sleep(0.2)

        producer = SteadyProducer(bootstrap_servers, topic, args.rate, args.duration_s)
        producer.start()
        while not producer.started_at and not producer.done.is_set():
            time.sleep(0.01)
        started_at = producer.started_at or time.monotonic()
        next_sample = started_at
        last_report = time.monotonic()
        production_ended_at: float | None = None
        drain_deadline: float | None = None
        while True:
            next_sample += args.sample_interval_s
            time.sleep(max(0.0, next_sample - time.monotonic()))
            if process.poll() is not None:
                failures.append(f"the ingest service exited early with code {process.returncode}")
                break
            try:
                status = read_status_kib(process.pid)
                last_metrics = scrape(metrics_url)
            except (OSError, ValueError) as error:
                failures.append(f"could not sample the service: {error!r}")
                break
            producing = not producer.done.is_set()
            t_s = round(time.monotonic() - started_at, 2)
            lag = last_metrics.get("lag_total")
            sample = Sample(
                t_s=t_s,
                rss_mib=round(status["VmRSS"] / 1024, 1),
                hwm_mib=round(status["VmHWM"] / 1024, 1),
                produced=producer.sent,
                messages=int(last_metrics.get("royalty_ingest_messages_total", 0)),
                events=int(last_metrics.get("royalty_ingest_events_total", 0)),
                dead_letters=int(last_metrics.get("royalty_ingest_dead_letters_total", 0)),
                batches=int(last_metrics.get("royalty_ingest_batches_total", 0)),
                lag=None if lag is None else int(lag),
                backlog=producer.sent - int(last_metrics.get("royalty_ingest_messages_total", 0)),
                load_1m=round(os.getloadavg()[0], 2),
                producing=producing and t_s < args.duration_s,
            )
            samples.append(sample)
            if time.monotonic() - last_report >= 30:
                last_report = time.monotonic()
                print(f"  t={sample.t_s:6.0f}s rss={sample.rss_mib:7.1f} MiB produced={sample.produced:,} "
                      f"ingested={sample.messages:,} lag={sample.lag} load={sample.load_1m}", flush=True)
            if producing:
                continue
            if production_ended_at is None:
                production_ended_at = producer.finished_at or time.monotonic()
                drain_deadline = time.monotonic() + args.catch_up_timeout_s
                print(f"  production ended: {producer.sent:,} messages; draining ...", flush=True)
            if sample.messages >= producer.sent:
                drain_s = time.monotonic() - production_ended_at
                break
            assert drain_deadline is not None
            if time.monotonic() > drain_deadline:
                failures.append(f"the service did not drain the topic within {args.catch_up_timeout_s:g} s "
                                f"({sample.messages:,} of {producer.sent:,} messages)")
                break
    finally:
        if producer is not None:
            producer.stop.set()
            producer.done.wait(timeout=60)
        if process is not None:
            exit_code = stop_service(process)
            if exit_code != 0:
                failures.append(f"the ingest service exited with {exit_code} (None: killed after "
                                f"{SERVICE_STOP_TIMEOUT_S} s)")
        if producer is not None and process is not None and not failures and lake.exists():
            ledger_result = check_ledger(lake, topic, bootstrap_servers, producer)
        if broker is not None:
            broker.stop()
    load_end = [round(x, 2) for x in os.getloadavg()]
    if producer is not None and producer.started_at:
        for line in log.batches:
            line.t_s = round(line.t_s - producer.started_at, 3)
        log.progress_lags = [(t - producer.started_at, lag) for t, lag in log.progress_lags]

    assert producer is not None
    if producer.errors:
        failures.append(f"{len(producer.errors)} produce errors, first: {producer.errors[0]}")
    if ledger_result and not ledger_result["exact"]:
        failures.append("the ledger is not exact (see `ledger`)")
    elif not ledger_result:
        failures.append("the ledger was not checked")

    producing = [s for s in samples if s.producing]
    window_s = min(60.0, args.duration_s / 3)
    first = [s.rss_mib for s in producing if s.t_s <= window_s] or [s.rss_mib for s in samples[:1]] or [0.0]
    last_from = producing[-1].t_s - window_s if producing else 0.0
    last = [s.rss_mib for s in producing if s.t_s >= last_from] or first
    growth = statistics.median(last) / statistics.median(first) if statistics.median(first) else float("inf")
    flat = growth <= args.rss_growth_max
    # The trend over the whole production period (least squares), steadier than two windows.
    slope = (statistics.linear_regression([s.t_s for s in producing], [s.rss_mib for s in producing]).slope * 60
             if len(producing) >= 2 else 0.0)
    if not flat:
        failures.append(f"RSS grew x{growth:.3f} from the first to the last minute (threshold x{args.rss_growth_max})")
    lags = [s.lag for s in producing if s.lag is not None]
    backlogs = sorted(s.backlog for s in producing)
    produced_s = (producer.finished_at or time.monotonic()) - producer.started_at if producer.started_at else 0.0
    summary: dict[str, Any] = {
        "command": " ".join(["python", "benchmarks/soak.py", *sys.argv[1:]]),
        "started_at": started_wall,
        "ended_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {
            "duration_s": args.duration_s,
            "rate": args.rate,
            "sample_interval_s": args.sample_interval_s,
            "batch_records_max": args.batch_records_max,
            "batch_latency_ms_max": args.batch_latency_ms_max,
            "rss_growth_max": args.rss_growth_max,
            "partitions": PARTITIONS,
            "private_broker": args.bootstrap_servers is None,
        },
        "machine": {
            "cores": os.cpu_count(),
            "mem_total_gib": round(mem_total_gib(), 1),
            "load_start": load_start,
            "load_end": load_end,
            "load_1m_max": max((s.load_1m for s in samples), default=0.0),
            "load_1m_median": statistics.median(s.load_1m for s in samples) if samples else 0.0,
        },
        "produced": {
            "messages": producer.sent,
            "seconds": round(produced_s, 1),
            "rate": producer.sent / produced_s if produced_s else 0.0,
            "behind_max": producer.behind_max,
            "counts": dict(producer.counts),
            "errors": producer.errors[:5],
        },
        "ingest": {
            "messages": int(last_metrics.get("royalty_ingest_messages_total", 0)),
            "events": int(last_metrics.get("royalty_ingest_events_total", 0)),
            "dead_letters": int(last_metrics.get("royalty_ingest_dead_letters_total", 0)),
            "duplicates": int(last_metrics.get("royalty_ingest_duplicates_total", 0)),
            "batches": int(last_metrics.get("royalty_ingest_batches_total", 0)),
            "drain_s": round(drain_s, 1),
            "exit_code": exit_code,
            "problems": log.problems[:20],
        },
        "rss": {
            "first_mib": statistics.median(first),
            "first_max_mib": max(first),
            "last_mib": statistics.median(last),
            "last_max_mib": max(last),
            "window_s": window_s,
            "growth": round(growth, 4),
            "slope_mib_per_min": round(slope, 2),
            "threshold": args.rss_growth_max,
            "flat": flat,
            "hwm_mib": max((s.hwm_mib for s in samples), default=0.0),
        },
        "latency_s": latency_summary([b.latency_s for b in log.batches]),
        "latency_histogram_s": {f"p{int(q * 100)}": histogram_quantile(q, last_metrics) for q in (0.5, 0.95, 0.99)},
        "lag": {
            "median": statistics.median(lags) if lags else None,
            "max": max(lags) if lags else None,
            "final": samples[-1].lag if samples else None,
            "backlog_median": statistics.median(backlogs) if backlogs else None,
            "backlog_p95": percentile(backlogs, 0.95),
            "backlog_max": backlogs[-1] if backlogs else None,
            "backlog_max_s": backlogs[-1] / args.rate if backlogs else 0.0,
        },
        "ledger": ledger_result,
        "windows": windows(samples, log, args.report_interval_s),
        "samples": [asdict(s) for s in samples],
        "failures": failures,
        "verdict": "FAIL" if failures else "PASS",
    }
    if failures and log.tail:
        summary["service_log_tail"] = list(log.tail)
    if temporary and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        summary["workdir"] = str(workdir)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    summary = run(args)
    print_report(summary)
    if args.json_out is not None:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"summary: {args.json_out}")
    if summary["failures"] and summary.get("service_log_tail"):
        print("service log tail:\n  " + "\n  ".join(summary["service_log_tail"][-15:]), file=sys.stderr)
    return 0 if summary["verdict"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
