"""The Kafka broker stops and starts under a running `royalty ingest`: it reports the outage and resumes by itself."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from tests.faults.ingest_harness import (
    CATCH_UP_S_MAX,
    IngestProcess,
    Produced,
    assert_exactly_once,
    expected_ledger,
    ledger_contents,
    stored_offsets,
    wait_for,
)

if TYPE_CHECKING:
    from tests.support.kafka_broker import KafkaBroker

pytest_plugins = ("tests.support.kafka_broker",)

OUTAGE_S = 4
# The service backs off from 0.5 s, so it notices the outage within a few seconds.
OUTAGE_REPORTED_S_MAX = 30


def test_broker_restart_mid_stream_is_reported_and_ingest_resumes_losing_and_duplicating_nothing(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """The broker stops while ingest is mid-stream (bad messages included) and starts again 4 s later; the
    same process logs `kafka broker unreachable` then `reachable again`, ingests traffic produced after the
    restart, exits 0 on SIGTERM, and the ledger holds every event and dead letter exactly once."""
    produced = Produced(f"broker-outage-{uuid.uuid4().hex[:8]}")
    kafka_broker.create_topic(produced.topic, 3)
    produced.produce(kafka_broker, 20_000, seed=13)
    lake = tmp_path / "lake"
    ingest = IngestProcess(kafka_broker, produced.topic, lake, tmp_path / "ingest.log",
                           "--batch-records-max", "5000", "--batch-latency-ms-max", "300")  # fmt: skip
    try:
        wait_for(lambda: bool(stored_offsets(lake)), CATCH_UP_S_MAX, "ingest committed nothing before the outage")
        kafka_broker.stop()
        try:
            wait_for(lambda: bool(ingest.logged("kafka broker unreachable; the service keeps retrying")),
                     OUTAGE_REPORTED_S_MAX, "the outage was not reported")  # fmt: skip
            time.sleep(OUTAGE_S)
            assert ingest.alive(), ingest.output()[-3000:]
        finally:
            kafka_broker.start()
        produced.produce(kafka_broker, 20_000, seed=14)
        expected = expected_ledger(kafka_broker, produced)
        wait_for(lambda: stored_offsets(lake) == expected.offsets, CATCH_UP_S_MAX, "ingest did not resume")
        assert ingest.logged("kafka broker reachable again; resuming"), ingest.output()[-3000:]
        assert ingest.terminate() == 0, ingest.output()[-3000:]
    finally:
        ingest.kill()
    assert_exactly_once(ledger_contents(lake), expected)
