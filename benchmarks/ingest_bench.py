"""End-to-end `royalty ingest` rate against the raw kafka-python consume rate, on one broker.

Starts a local Apache Kafka broker (scripts/kafka-local), produces `--events` realistic metering
messages into a 6-partition topic, then measures in the same run:
  - baseline: a stock kafka-python consumer with all partitions assigned, iterating and discarding;
  - the same consumer with the native record decoder installed (ingest/native_records.py), for reference;
  - the ingest service (Kafka source, decode and validate, dedup, Parquet, DuckLake commit with
    offsets) from the same topic into a fresh embedded ledger, until the stored offsets reach
    the end offsets.
Prints both rates and their ratio.

    python benchmarks/ingest_bench.py --events 1000000
"""

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from ingest import native_records
from ingest.sample import SampleShape, SampleTraffic
from ingest.service import IngestService
from ingest.sources import KafkaSource
from ledger import Ledger
from tests.support.kafka_broker import KafkaBroker

topic = "bench-events"
partitions = 6


def raw_consume(bootstrap_servers: str, events: int, native: bool) -> float:
    """Seconds for one consumer, all partitions assigned, to iterate over `events` records and discard them."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False,
                             max_poll_records=10_000, fetch_max_bytes=64 * 1024 * 1024,
                             max_partition_fetch_bytes=8 * 1024 * 1024)
    if native:
        assert native_records.install(consumer)
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    consumer.seek_to_beginning()
    started, seen = time.perf_counter(), 0
    while seen < events:
        for records in consumer.poll(timeout_ms=200, max_records=10_000).values():
            seen += len(records)
    elapsed_s = time.perf_counter() - started
    consumer.close()
    return elapsed_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch-records-max", type=int, default=50_000)
    args = parser.parse_args()
    native_available = native_records.decoder_name() == "native"
    workdir = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    broker = KafkaBroker(workdir / "kafka", heap_mb=1024)
    broker.start()
    try:
        broker.create_topic(topic, partitions)
        print(f"producing {args.events:,} messages ...", flush=True)
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks=1, linger_ms=50,
                                 batch_size=1024 * 1024)
        for value in SampleTraffic(SampleShape(models=1_000, contributors=10_000)).metered(args.events):
            producer.send(topic, value)
        producer.flush()
        producer.close()
        ends = broker.end_offsets(topic)
        assert sum(ends.values()) == args.events, ends

        raw_s = raw_consume(broker.bootstrap_servers, args.events, native=False)
        native_s = raw_consume(broker.bootstrap_servers, args.events, native=True) if native_available else None

        ledger = Ledger.open(workdir / "lake")
        expected = {(topic, p): end for p, end in ends.items()}
        service: IngestService | None = None

        def make_source(owner: IngestService) -> KafkaSource:
            return KafkaSource(broker.bootstrap_servers, [topic], None, ledger.stored_offsets)

        def stop_when_caught_up(summary) -> None:
            if summary.messages >= args.events and ledger.stored_offsets() == expected:
                assert service is not None
                service.request_stop()

        service = IngestService(ledger, make_source, "USDC", args.batch_records_max, 1_000, "bench",
                                on_committed=stop_when_caught_up)
        started = time.perf_counter()
        summary = service.run()
        ingest_s = time.perf_counter() - started
        assert summary.events == args.events, summary
        ledger.close()
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    raw_rate, ingest_rate = args.events / raw_s, args.events / ingest_s
    print(f"machine: cores={os.cpu_count()} load={os.getloadavg()[0]:.1f}; {args.events:,} messages, "
          f"{partitions} partitions, batches of {args.batch_records_max:,}")
    print(f"raw kafka-python consume (iterate and discard): {raw_rate:,.0f} messages/s ({raw_s:.1f} s)")
    if native_s is not None:
        print(f"raw consume, native record decoder:             {args.events / native_s:,.0f} messages/s "
              f"({native_s:.1f} s)")
    print(f"royalty ingest end to end into the ledger:      {ingest_rate:,.0f} events/s ({ingest_s:.1f} s), "
          f"record decoder: {native_records.decoder_name()}")
    print(f"ratio ingest/raw: {ingest_rate / raw_rate:.2f} (targets: >= 100,000 events/s and >= 0.5)")


if __name__ == "__main__":
    main()
