"""`royalty ingest` against a real Apache Kafka broker: exactly-once under bad input (kills, outages: tests/faults)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from ingest.producer import produce_sample_traffic, sample_messages
from ledger import Ledger
from ledger.verify import verify
from tests.conftest import depth, repo_root

if TYPE_CHECKING:
    from tests.support.kafka_broker import KafkaBroker

pytest_plugins = ("tests.support.kafka_broker",)

_environment = {**os.environ, "PYTHONPATH": str(repo_root)}
# Bound on waiting for the ingest service to catch up with the topic; generous for 2 busy cores.
catch_up_s_max = 180


class _Identity(msgspec.Struct):
    id: str
    type: str


def expected(events: int, seed: int, **ppm: int) -> tuple[dict[str, set[str]], int]:
    """The distinct valid event ids by type, and how many dead letters the traffic must leave."""
    ids: dict[str, set[str]] = {}
    dead_letters = 0
    for kind, message in sample_messages(events, models=20, contributors=200, seed=seed, **ppm):
        if kind in ("invalid", "conflict"):
            dead_letters += 1
        elif kind in ("registry", "event"):
            identity = msgspec.json.decode(message, type=_Identity)
            ids.setdefault(identity.type, set()).add(identity.id)
    return ids, dead_letters


def stored(lake: Path) -> tuple[dict[str, Counter[str]], list[tuple[int, int, str]], dict[tuple[str, int], int]]:
    """Event ids (with multiplicity) by type, dead letters as (partition, offset, reason), stored offsets."""
    tables = {
        "ai.inference.metered.v1": "inference_metered",
        "ai.contributor.registered.v1": "contributor_registered",
        "ai.model.registered.v1": "model_registered",
        "ai.split-policy.set.v1": "split_policy_set",
    }
    with Ledger.open_read_only(lake) as reader:
        ids = {
            event_type: Counter(
                row[0] for row in reader.connection.execute(f"SELECT event_id FROM lake.main.{table}").fetchall()
            )
            for event_type, table in tables.items()
        }
        dead = reader.connection.execute(
            "SELECT kafka_partition, kafka_offset, reason FROM lake.main.dead_letter ORDER BY ALL"
        ).fetchall()
        assert verify(reader).ok
        return ids, dead, reader.stored_offsets()


def ingest_command(broker: KafkaBroker, topic: str, lake: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "royalty.cli", "ingest", "--bootstrap-servers", broker.bootstrap_servers,
            "--topic", topic, "--lake", str(lake), "--batch-records-max", "20000", "--batch-latency-ms-max", "500",
            *extra]


def assert_exactly_once(lake: Path, topic: str, broker: KafkaBroker, ids: dict[str, set[str]], dead: int) -> None:
    stored_ids, dead_letters, offsets = stored(lake)
    for event_type, expected_ids in ids.items():
        counts = stored_ids[event_type]
        assert set(counts) == expected_ids, event_type
        assert max(counts.values()) == 1, f"{event_type} stored more than once"
    assert len(dead_letters) == dead
    assert len({(p, o) for p, o, _ in dead_letters}) == dead, "a dead letter stored twice"
    assert all(reason for _, _, reason in dead_letters)
    assert offsets == {(topic, p): end for p, end in broker.end_offsets(topic).items()}


def test_ingest_keeps_every_valid_event_once_and_every_bad_message_as_a_dead_letter(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """50k events in CI (200k nightly) with 1% duplicates, 0.1% conflicts and 1% invalid over 6 partitions, ingested
    until idle."""
    topic, events, seed = "ingest-acceptance", depth(50_000, 200_000), 11
    ppm = {"duplicates_ppm": 10_000, "conflicts_ppm": 1_000, "invalid_ppm": 10_000}
    kafka_broker.create_topic(topic, 6)
    produce_sample_traffic(events, kafka_broker.bootstrap_servers, topic, None, models=20, contributors=200,
                           seed=seed, **ppm)
    result = subprocess.run(ingest_command(kafka_broker, topic, tmp_path / "lake", "--until-idle-s", "5"),
                            capture_output=True, text=True, env=_environment, timeout=catch_up_s_max)
    assert result.returncode == 0, result.stderr[-3000:]
    ids, dead = expected(events, seed, **ppm)
    assert_exactly_once(tmp_path / "lake", topic, kafka_broker, ids, dead)


def test_records_without_a_value_become_dead_letters_and_ingest_carries_on(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """Tombstones (null values, with keys as on a compacted topic) and an empty value among real events."""
    from kafka import KafkaProducer

    from ingest.sample import SampleTraffic

    topic = "ingest-tombstones"
    kafka_broker.create_topic(topic, 1)
    events = list(SampleTraffic().metered(20))
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap_servers)
    for index, event in enumerate(events):
        producer.send(topic, key=b"key", value=event)
        if index in (3, 11):
            producer.send(topic, key=b"key", value=None)
    producer.send(topic, key=b"key", value=b"")
    producer.flush()
    producer.close()
    result = subprocess.run(ingest_command(kafka_broker, topic, tmp_path / "lake", "--until-idle-s", "3"),
                            capture_output=True, text=True, env=_environment, timeout=catch_up_s_max)
    assert result.returncode == 0, result.stderr[-3000:]
    ids, dead, offsets = stored(tmp_path / "lake")
    assert set(ids["ai.inference.metered.v1"]) == {msgspec.json.decode(e, type=_Identity).id for e in events}
    assert [(offset, "tombstone" in reason) for _, offset, reason in dead] == [(4, True), (13, True), (22, False)]
    assert offsets == {(topic, 0): 23}
