"""The PostgreSQL catalog stops and starts under two `royalty ingest` workers of one consumer group."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from tests.faults.ingest_harness import (
    CATCH_UP_S_MAX,
    STOP_S_MAX,
    IngestProcess,
    PacedProducer,
    Produced,
    assert_exactly_once,
    expected_ledger,
    ledger_contents,
    stored_offsets,
    wait_for,
)

if TYPE_CHECKING:
    from tests.support.kafka_broker import KafkaBroker
    from tests.support.postgres import PostgresServer

pytest_plugins = ("tests.support.kafka_broker", "tests.support.postgres")

PARTITIONS = 6
OUTAGE_S = 6
# Traffic keeps flowing this long after the catalog is back, so the workers resume under load.
TRAFFIC_AFTER_OUTAGE_S = 3
OUTAGE_REPORTED_S_MAX = 30
CATALOG_UNREACHABLE = "ledger catalog unreachable; retrying the same batch"
CATALOG_BACK = "ledger available again; resuming"
# Two workers' start-up and the group's rebalance: 60 s was exceeded once in a full CI run (2026-12-07, passed 3 of 3
# alone at 32-50 s a run); only the wait before the outage, it costs nothing when the group splits sooner.
GROUP_STABLE_S_MAX = 120


# Was xfail (sessions 4-6): it failed about 1 run in 4, once on DuckLake's "Unknown name map id" after both workers
# retried at once (a commit DuckLake retried itself, re-numbering its new column maps but not its files; the ledger
# now redoes such a transaction itself, ledger/connection.py). 10 of 10 runs passed after that fix (load 5-50).
def test_catalog_restart_under_two_group_workers_is_retried_and_loses_and_duplicates_nothing(
    kafka_broker: KafkaBroker, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """Two workers (same --group-id, PostgreSQL catalog, shared data path) ingest steady traffic; PostgreSQL
    stops for at least 6 s and starts again. Both workers stay up, log the outage and the recovery, catch up
    with the topic, exit 0 on SIGTERM, and the ledger holds every event and dead letter exactly once. A third
    worker started during the outage exits non-zero saying the catalog is unreachable (no traceback)."""
    produced = Produced(f"catalog-outage-{uuid.uuid4().hex[:8]}")
    kafka_broker.create_topic(produced.topic, PARTITIONS)
    catalog = postgres_server.create_database(f"outage_{uuid.uuid4().hex[:8]}")
    data_path = tmp_path / "data"
    options = ("--group-id", f"outage-{uuid.uuid4().hex[:8]}", "--data-path", str(data_path),
               "--batch-records-max", "3000", "--batch-latency-ms-max", "300")  # fmt: skip
    workers = [IngestProcess(kafka_broker, produced.topic, catalog, tmp_path / f"worker-{n}.log", *options)
               for n in range(2)]  # fmt: skip
    producer = PacedProducer(kafka_broker, produced, events_per_chunk=3_000, pause_s=0.5, seed=31)
    try:
        wait_for(lambda: _split(workers[0].partitions(), workers[1].partitions()), GROUP_STABLE_S_MAX,
                 "the two workers never split the partitions")  # fmt: skip
        producer.start()
        wait_for(lambda: bool(stored_offsets(catalog, data_path)), CATCH_UP_S_MAX, "nothing committed before")
        postgres_server.stop()
        try:
            outage_started_s = time.monotonic()
            wait_for(lambda: all(w.logged(CATALOG_UNREACHABLE) or not w.alive() for w in workers),
                     OUTAGE_REPORTED_S_MAX, "a worker did not report the catalog outage")  # fmt: skip
            # A worker (re)started in the outage cannot open the ledger: it must say so, not crash.
            late = IngestProcess(kafka_broker, produced.topic, catalog, tmp_path / "late.log", *options)
            assert late.process.wait(timeout=STOP_S_MAX) != 0, late.output()[-3000:]
            assert "catalog unreachable" in late.output() and "Traceback" not in late.output(), late.output()[-3000:]
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - outage_started_s)))
        finally:
            postgres_server.start()
        time.sleep(TRAFFIC_AFTER_OUTAGE_S)
        producer.stop()
        expected = expected_ledger(kafka_broker, produced)
        wait_for(lambda: stored_offsets(catalog, data_path) == expected.offsets, CATCH_UP_S_MAX,
                 "the workers did not catch up after the outage")  # fmt: skip
        for worker in workers:
            assert worker.alive(), worker.output()[-3000:]
            assert worker.logged(CATALOG_UNREACHABLE), worker.output()[-3000:]
            assert worker.logged(CATALOG_BACK), worker.output()[-3000:]
            assert worker.terminate() == 0, worker.output()[-3000:]
    finally:
        if producer.is_alive():
            producer.stop()
        if not postgres_server.is_running():
            postgres_server.start()
        for worker in workers:
            worker.kill()
    assert_exactly_once(ledger_contents(catalog, data_path), expected)


def _split(first: set[int], second: set[int]) -> bool:
    """Whether two group members share all the partitions, each holding some."""
    return bool(first) and bool(second) and first | second == set(range(PARTITIONS)) and not first & second
