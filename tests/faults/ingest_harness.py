"""What the ingest fault tests share: paced traffic, `royalty ingest` processes, and the exact-ledger oracle.

The oracle does not trust the service: it regenerates every produced message from its seed,
reads the topic back from the broker, and derives the ledger an exactly-once ingest must end
with: each valid event id once, a dead letter at the position of every invalid message and
every conflicting resend (its raw bytes intact), and each partition's stored offset at its end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
from kafka import KafkaConsumer, TopicPartition

from ingest.producer import produce_sample_traffic, sample_messages
from ledger import Ledger
from ledger.verify import verify
from tests.conftest import repo_root

if TYPE_CHECKING:
    from tests.support.kafka_broker import KafkaBroker

environment = {**os.environ, "PYTHONPATH": str(repo_root)}
# 1% exact duplicates, 0.1% conflicting resends, 1% invalid messages: every kind of bad input.
mistakes_ppm = {"duplicates_ppm": 10_000, "conflicts_ppm": 1_000, "invalid_ppm": 10_000}
shape = {"models": 20, "contributors": 200}
event_tables = {
    "ai.inference.metered.v1": "inference_metered",
    "ai.contributor.registered.v1": "contributor_registered",
    "ai.model.registered.v1": "model_registered",
    "ai.split-policy.set.v1": "split_policy_set",
}
# Bounds on waiting; generous because the 2-core machine is shared with other work.
CATCH_UP_S_MAX = 180
STOP_S_MAX = 60
POLL_S = 0.5
READ_BACK_POLL_MS = 1_000
READ_BACK_S_MAX = 120
POSITIONED = "partitions positioned at the ledger's offsets"


class _Identity(msgspec.Struct):
    id: str
    type: str


Position = tuple[str, int, int]  # topic, partition, offset


@dataclass
class Produced:
    """The traffic a test sent: one (events, seed) chunk per call of the sample producer."""

    topic: str
    chunks: list[tuple[int, int]] = field(default_factory=list)

    def produce(self, broker: KafkaBroker, events: int, seed: int) -> None:
        """Send one chunk of sample traffic with every kind of mistake, keyed by event id."""
        produce_sample_traffic(events, broker.bootstrap_servers, self.topic, None, seed=seed, **mistakes_ppm, **shape)
        self.chunks.append((events, seed))


class PacedProducer(threading.Thread):
    """Sends chunks of traffic one after another, a pause between them, until `stop()`: traffic that keeps flowing."""

    def __init__(self, broker: KafkaBroker, produced: Produced, events_per_chunk: int, pause_s: float, seed: int):
        super().__init__(daemon=True)
        self.broker, self.produced = broker, produced
        self.events_per_chunk, self.pause_s, self.seed = events_per_chunk, pause_s, seed
        self.error: BaseException | None = None
        self._stop_requested = threading.Event()

    def run(self) -> None:
        try:
            chunk = 0
            while not self._stop_requested.is_set():
                self.produced.produce(self.broker, self.events_per_chunk, self.seed + chunk)
                chunk += 1
                self._stop_requested.wait(self.pause_s)
        except BaseException as error:  # re-raised by stop() in the test's thread
            self.error = error

    def stop(self) -> None:
        self._stop_requested.set()
        self.join(timeout=CATCH_UP_S_MAX)
        assert not self.is_alive(), "the producer did not stop"
        if self.error is not None:
            raise self.error


@dataclass
class LedgerContents:
    """A ledger reduced to what exactly-once is about."""

    event_ids: dict[str, Counter[str]]  # event type -> id -> times stored
    dead_letters: dict[Position, list[bytes]]  # position -> raw bytes of every dead letter stored there
    offsets: dict[tuple[str, int], int]
    problems: list[str]


@dataclass
class Expected:
    """The ledger an exactly-once ingest of the produced traffic must end with."""

    event_ids: dict[str, set[str]]
    dead_letters: dict[Position, bytes]
    offsets: dict[tuple[str, int], int]


def expected_ledger(broker: KafkaBroker, produced: Produced) -> Expected:
    """Regenerate the produced messages, read the topic back, and derive the one correct ledger."""
    event_ids: dict[str, set[str]] = {}
    dead_bytes: set[bytes] = set()
    for events, seed in produced.chunks:
        for kind, message in sample_messages(events, seed=seed, **mistakes_ppm, **shape):
            if kind in ("invalid", "conflict"):
                dead_bytes.add(message)
            elif kind in ("registry", "event"):
                identity = msgspec.json.decode(message, type=_Identity)
                event_ids.setdefault(identity.type, set()).add(identity.id)
    ends = {(produced.topic, p): end for p, end in broker.end_offsets(produced.topic).items()}
    dead_letters = {
        position: value for position, value in read_topic(broker, produced.topic, ends) if value in dead_bytes
    }
    return Expected(event_ids, dead_letters, ends)


def read_topic(broker: KafkaBroker, topic: str, ends: dict[tuple[str, int], int]) -> list[tuple[Position, bytes]]:
    """Every record of `topic` up to `ends`, with its position, straight from the broker."""
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap_servers, enable_auto_commit=False,
                             max_partition_fetch_bytes=8 * 1024 * 1024)  # fmt: skip
    try:
        partitions = [TopicPartition(topic, p) for (_, p) in sorted(ends)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        records: list[tuple[Position, bytes]] = []
        deadline_s = time.monotonic() + READ_BACK_S_MAX
        while any(consumer.position(tp) < ends[(topic, tp.partition)] for tp in partitions):
            assert time.monotonic() < deadline_s, f"could not read topic `{topic}` back within {READ_BACK_S_MAX} s"
            for tp, batch in consumer.poll(timeout_ms=READ_BACK_POLL_MS).items():
                end = ends[(topic, tp.partition)]
                records += [((topic, tp.partition, r.offset), r.value) for r in batch if r.offset < end]
        return records
    finally:
        consumer.close()


def ledger_contents(lake: str | Path, data_path: str | Path | None = None) -> LedgerContents:
    """Event ids with multiplicity, dead letters by position, stored offsets and `verify`'s problems."""
    with Ledger.open_read_only(lake, None if data_path is None else str(data_path)) as reader:
        execute = reader.connection.execute
        event_ids = {
            event_type: Counter(row[0] for row in execute(f"SELECT event_id FROM lake.main.{table}").fetchall())
            for event_type, table in event_tables.items()
        }
        dead_letters: dict[Position, list[bytes]] = {}
        for topic, partition, offset, raw in execute(
            "SELECT kafka_topic, kafka_partition, kafka_offset, raw FROM lake.main.dead_letter"
        ).fetchall():
            dead_letters.setdefault((topic, partition, offset), []).append(raw)
        return LedgerContents(event_ids, dead_letters, reader.stored_offsets(), list(verify(reader).problems))


def assert_exactly_once(contents: LedgerContents, expected: Expected, context: str = "") -> None:
    """Each produced valid event once, each bad message once as a dead letter with its bytes, offsets at the end."""
    where = f" ({context})" if context else ""
    assert not contents.problems, f"royalty verify found problems{where}: {contents.problems}"
    for event_type, ids in expected.event_ids.items():
        counts = contents.event_ids[event_type]
        missing, extra = ids - set(counts), set(counts) - ids
        assert not missing, f"{len(missing)} {event_type} events lost{where}, e.g. {sorted(missing)[:3]}"
        assert not extra, f"{len(extra)} {event_type} events never produced{where}, e.g. {sorted(extra)[:3]}"
        twice = [event_id for event_id, count in counts.items() if count > 1]
        assert not twice, f"{len(twice)} {event_type} events stored more than once{where}, e.g. {twice[:3]}"
    missing_dead = expected.dead_letters.keys() - contents.dead_letters.keys()
    extra_dead = contents.dead_letters.keys() - expected.dead_letters.keys()
    assert not missing_dead, f"{len(missing_dead)} bad messages lost{where}, e.g. {sorted(missing_dead)[:3]}"
    assert not extra_dead, f"{len(extra_dead)} unexpected dead letters{where}, e.g. {sorted(extra_dead)[:3]}"
    for position, raws in contents.dead_letters.items():
        assert raws == [expected.dead_letters[position]], f"dead letter at {position} stored {len(raws)} times{where}"
    assert contents.offsets == expected.offsets, f"stored offsets are not the topic's ends{where}"


class IngestProcess:
    """One `royalty ingest` process with JSON logs in a file."""

    def __init__(self, broker: KafkaBroker, topic: str, lake: str | Path, log_path: Path, *extra: str) -> None:
        self.log_path = log_path
        command = [
            sys.executable, "-m", "royalty.cli", "ingest", "--bootstrap-servers", broker.bootstrap_servers,
            "--topic", topic, "--lake", str(lake), "--log-format", "json", *extra,
        ]  # fmt: skip
        with log_path.open("a") as log:
            self.process = subprocess.Popen(command, env=environment, stdout=log, stderr=log)

    def log_entries(self) -> list[dict]:
        """The JSON log lines so far (other lines, e.g. the final summary, are skipped)."""
        entries = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    entries.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut by SIGKILL
                    continue
        return entries

    def logged(self, message: str) -> list[dict]:
        return [entry for entry in self.log_entries() if entry.get("message") == message]

    def wait_until_positioned(self, timeout_s: float) -> None:
        """Return once the process has joined the broker and sought the ledger's offsets (or exited)."""
        wait_for(lambda: bool(self.logged(POSITIONED)) or not self.alive(), timeout_s, f"{self.log_path} never started")

    def partitions(self) -> set[int]:
        """The partitions the process was last positioned on (its share of a consumer group)."""
        positioned = self.logged(POSITIONED)
        return {int(name.rsplit("/", 1)[1]) for name in positioned[-1]["partitions"]} if positioned else set()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.process.kill()
        self.process.wait(timeout=STOP_S_MAX)

    def terminate(self) -> int:
        """SIGTERM, then the exit code (the service commits its in-flight batch first)."""
        if self.alive():
            self.process.terminate()
        return self.process.wait(timeout=STOP_S_MAX)


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout_s`."""
    deadline_s = time.monotonic() + timeout_s
    while time.monotonic() < deadline_s:
        if condition():
            return
        time.sleep(POLL_S)
    raise AssertionError(f"{what}: not within {timeout_s} s")


def stored_offsets(lake: str | Path, data_path: str | Path | None = None) -> dict[tuple[str, int], int]:
    """The ledger's offsets, or {} while it does not exist yet."""
    try:
        with Ledger.open_read_only(lake, None if data_path is None else str(data_path)) as reader:
            return reader.stored_offsets()
    except Exception:  # not created yet, or the catalog is down in an outage test
        return {}
