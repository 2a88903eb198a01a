"""`royalty ingest` against a real Apache Kafka broker: exactly-once effect under errors, kills and outages."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from ingest.producer import produce_sample_traffic, sample_messages
from ledger import Ledger
from ledger.verify import verify
from tests.conftest import repo_root

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
    """200k events with 1% duplicates, 0.1% conflicts and 1% invalid over 6 partitions, ingested until idle."""
    topic, events, seed = "ingest-acceptance", 200_000, 11
    ppm = {"duplicates_ppm": 10_000, "conflicts_ppm": 1_000, "invalid_ppm": 10_000}
    kafka_broker.create_topic(topic, 6)
    produce_sample_traffic(events, kafka_broker.bootstrap_servers, topic, None, models=20, contributors=200,
                           seed=seed, **ppm)
    result = subprocess.run(ingest_command(kafka_broker, topic, tmp_path / "lake", "--until-idle", "5"),
                            capture_output=True, text=True, env=_environment, timeout=catch_up_s_max)
    assert result.returncode == 0, result.stderr[-3000:]
    ids, dead = expected(events, seed, **ppm)
    assert_exactly_once(tmp_path / "lake", topic, kafka_broker, ids, dead)


def test_ingest_killed_repeatedly_while_traffic_flows_ends_identical_to_an_uninterrupted_run(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """SIGKILL of the ingest process 6 times at random moments while producing; the ledger equals a clean run's."""
    topic, events, seed = "ingest-crash", 60_000, 12
    ppm = {"duplicates_ppm": 10_000, "conflicts_ppm": 1_000, "invalid_ppm": 10_000}
    kafka_broker.create_topic(topic, 6)
    producer = threading.Thread(
        target=produce_sample_traffic,
        args=(events, kafka_broker.bootstrap_servers, topic, None),
        kwargs={"models": 20, "contributors": 200, "seed": seed, **ppm},
    )
    producer.start()
    rng = random.Random(3)
    lake = tmp_path / "crashed"
    for _kill in range(6):
        process = subprocess.Popen(ingest_command(kafka_broker, topic, lake), env=_environment,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(2.0, 5.0))
        process.send_signal(signal.SIGKILL)
        process.wait()
    producer.join()
    for target in (lake, tmp_path / "clean"):
        finished = subprocess.run(ingest_command(kafka_broker, topic, target, "--until-idle", "5"),
                                  capture_output=True, text=True, env=_environment, timeout=catch_up_s_max)
        assert finished.returncode == 0, finished.stderr[-3000:]
    ids, dead = expected(events, seed, **ppm)
    assert_exactly_once(lake, topic, kafka_broker, ids, dead)
    crashed, clean = stored(lake), stored(tmp_path / "clean")
    assert crashed[0] == clean[0], "event ids differ from the uninterrupted run"
    assert crashed[1] == clean[1], "dead letters differ from the uninterrupted run"


def test_broker_restart_mid_stream_loses_and_duplicates_nothing(kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    """The broker stops and starts while ingest runs; the service logs the outage, resumes, and SIGTERM exits 0."""
    topic, seed = "ingest-restart", 13
    kafka_broker.create_topic(topic, 3)
    no_errors = {"duplicates_ppm": 0, "conflicts_ppm": 0, "invalid_ppm": 0}
    produce_sample_traffic(20_000, kafka_broker.bootstrap_servers, topic, None, models=20, contributors=200,
                           seed=seed, **no_errors)
    lake = tmp_path / "lake"
    log_path = tmp_path / "ingest.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(ingest_command(kafka_broker, topic, lake), env=_environment, stderr=log)
        try:
            _wait_for(lambda: lake.joinpath("catalog.sqlite").exists() and _events(lake) > 0)
            kafka_broker.stop()
            time.sleep(4)
            kafka_broker.start()
            produce_sample_traffic(20_000, kafka_broker.bootstrap_servers, topic, None, models=20,
                                   contributors=200, seed=seed + 1, **no_errors)
            ends = {(topic, p): end for p, end in kafka_broker.end_offsets(topic).items()}
            _wait_for(lambda: _offsets(lake) == ends)
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0
    first, _ = expected(20_000, seed, **no_errors)
    second, _ = expected(20_000, seed + 1, **no_errors)
    ids = {t: first.get(t, set()) | second.get(t, set()) for t in set(first) | set(second)}
    assert_exactly_once(lake, topic, kafka_broker, ids, 0)
    assert "unreachable" in log_path.read_text()


def _events(lake: Path) -> int:
    with Ledger.open_read_only(lake) as reader:
        return reader.connection.execute("SELECT count(*) FROM lake.main.inference_metered").fetchone()[0]


def _offsets(lake: Path) -> dict[tuple[str, int], int]:
    with Ledger.open_read_only(lake) as reader:
        return reader.stored_offsets()


def _wait_for(condition, timeout_s: float = catch_up_s_max) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except Exception:  # the ledger may not exist yet
            pass
        time.sleep(0.5)
    raise AssertionError(f"condition not met within {timeout_s} s")
