"""Where ingest reads messages from: Kafka topics, or JSON-lines files for backfills.

A source yields messages as parallel lists (values, topics, partitions, offsets) and can be
moved to the positions stored in the ledger, which are the only positions that count.
"""

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import IO, Protocol

from ingest import constants, native_records
from ingest.errors import IngestConfigError
from ledger import LedgerError
from schemas.errors import require

log = logging.getLogger(__name__)

# Both kafka-python's ConsumerRecord and the native decoder's Record have these attributes.
_record_value = attrgetter("value")
_record_offset = attrgetter("offset")


@dataclass
class Messages:
    """Messages as parallel lists, in the order read."""

    values: list[bytes | None] = field(default_factory=list)  # None: a record with a null value
    topics: list[str] = field(default_factory=list)
    partitions: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.values)

    def extend(self, other: "Messages") -> None:
        self.values += other.values
        self.topics += other.topics
        self.partitions += other.partitions
        self.offsets += other.offsets


class Source(Protocol):
    def poll(self, records_max: int, timeout_ms: int) -> Messages: ...

    def seek(self, stored_offsets: dict[tuple[str, int], int]) -> None: ...

    def lag(self) -> dict[tuple[str, int], int]: ...

    def connected(self) -> bool: ...

    def close(self) -> None: ...


class FileSource:
    """CloudEvents as JSON lines; `file:<absolute path>`, partition 0 and the line index stand in
    for Kafka's topic, partition and offset, so a file ingested twice adds nothing."""

    def __init__(self, paths: Sequence[str], stdin: IO[bytes] | None = None) -> None:
        self._files: list[tuple[str, IO[bytes]]] = []
        for path in paths:
            if path == "-":
                require(stdin is not None, "a `-` file source is given the standard input stream")
                self._files.append(("file:-", stdin))
            else:
                resolved = Path(path).expanduser().resolve()
                if not resolved.is_file():
                    raise IngestConfigError(f"--from-file `{path}` does not exist or is not a file")
                self._files.append((f"file:{resolved}", resolved.open("rb")))
        self._line_index = [0] * len(self._files)
        self._skip_until = [0] * len(self._files)
        self._current = 0

    def seek(self, stored_offsets: dict[tuple[str, int], int]) -> None:
        for index, (name, _) in enumerate(self._files):
            self._skip_until[index] = stored_offsets.get((name, 0), 0)

    def poll(self, records_max: int, timeout_ms: int) -> Messages:
        messages = Messages()
        while self._current < len(self._files) and len(messages) < records_max:
            name, handle = self._files[self._current]
            line = handle.readline()
            if not line:
                self._current += 1
                continue
            index = self._line_index[self._current]
            self._line_index[self._current] += 1
            if index < self._skip_until[self._current]:
                continue
            value = line.rstrip(b"\r\n")
            if not value.strip():
                continue  # blank lines are layout, not messages
            messages.values.append(value)
            messages.topics.append(name)
            messages.partitions.append(0)
            messages.offsets.append(index)
        return messages

    def exhausted(self) -> bool:
        return self._current >= len(self._files)

    def lag(self) -> dict[tuple[str, int], int]:
        return {}

    def connected(self) -> bool:
        return True

    def close(self) -> None:
        for name, handle in self._files:
            if name != "file:-":
                handle.close()


class KafkaSource:
    """A kafka-python consumer: all partitions by manual assignment, or a share of them in a group.

    In a group, `on_revoked(partitions)` is called before partitions are taken away (so the
    service can commit its in-flight batch) and `on_assigned` after new ones arrive (so it
    can seek them to the ledger's offsets).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topics: Sequence[str],
        group_id: str | None,
        stored_offsets: Callable[[], dict[tuple[str, int], int]],
        on_revoked: Callable[[], None] | None = None,
        client_id: str = "royalty-ingest",
    ) -> None:
        from kafka import KafkaConsumer
        from kafka.errors import KafkaError

        self.topics = list(topics)
        self.group_id = group_id
        self._stored_offsets = stored_offsets
        self._on_revoked = on_revoked
        # Partitions assigned while the ledger could not tell their offsets: paused until it can.
        self._unpositioned: set = set()
        backoff_s = constants.broker_backoff_s_min
        while True:
            try:
                self.consumer = KafkaConsumer(
                    bootstrap_servers=bootstrap_servers.split(","),
                    group_id=group_id,
                    client_id=client_id,
                    enable_auto_commit=False,
                    auto_offset_reset="earliest",
                    max_poll_records=constants.poll_records_max,
                    fetch_max_bytes=64 * 1024 * 1024,
                    max_partition_fetch_bytes=8 * 1024 * 1024,
                    session_timeout_ms=10_000,
                    heartbeat_interval_ms=3_000,
                )
                break
            except KafkaError:  # no broker reachable yet: kafka-python 3 raises its base error
                log.warning(
                    "kafka broker unreachable; retrying",
                    extra={"bootstrap_servers": bootstrap_servers, "retry_in_s": backoff_s},
                )
                time.sleep(backoff_s)
                backoff_s = min(constants.broker_backoff_s_max, backoff_s * 2)
        native_records.install(self.consumer)
        if group_id is None:
            self._assign_all()
        else:
            from kafka import ConsumerRebalanceListener

            source = self

            class Listener(ConsumerRebalanceListener):
                def on_partitions_revoked(self, revoked) -> None:
                    if source._on_revoked is not None:
                        source._on_revoked()

                def on_partitions_assigned(self, assigned) -> None:
                    source._seek_partitions(list(assigned))

            self.consumer.subscribe(self.topics, listener=Listener())

    def _assign_all(self) -> None:
        from kafka import TopicPartition

        partitions = []
        for topic in self.topics:
            numbers = None
            for _ in range(50):
                numbers = self.consumer.partitions_for_topic(topic)
                if numbers:
                    break
                time.sleep(0.2)
            if not numbers:
                raise IngestConfigError(f"topic `{topic}` does not exist on the broker (or has no partitions)")
            partitions += [TopicPartition(topic, number) for number in sorted(numbers)]
        self.consumer.assign(partitions)
        self._seek_partitions(partitions)

    def _seek_partitions(self, partitions: list) -> None:
        try:
            stored = self._stored_offsets()
        except LedgerError as error:
            # Only the ledger's offsets count: rather than read from Kafka's, the partitions wait,
            # paused, and `poll` positions them once the ledger answers again.
            if not set(partitions) <= self._unpositioned:
                log.warning(
                    "partitions assigned while the ledger is unreachable; paused until it answers",
                    extra={"partitions": [f"{p.topic}/{p.partition}" for p in partitions], "error": str(error)},
                )
            self.consumer.pause(*partitions)
            self._unpositioned |= set(partitions)
            return
        for partition in partitions:
            offset = stored.get((partition.topic, partition.partition))
            if offset is None:
                self.consumer.seek_to_beginning(partition)
            else:
                self.consumer.seek(partition, offset)
        if self._unpositioned & set(partitions):
            self.consumer.resume(*(self._unpositioned & set(partitions)))
            self._unpositioned -= set(partitions)
        log.info(
            "partitions positioned at the ledger's offsets",
            extra={"partitions": [f"{p.topic}/{p.partition}" for p in partitions]},
        )

    def seek(self, stored_offsets: dict[tuple[str, int], int]) -> None:
        # Seeking is local to the consumer (no broker round trip), so it cannot fail in an outage.
        self._seek_partitions(list(self.consumer.assignment()))

    def poll(self, records_max: int, timeout_ms: int) -> Messages:
        from kafka.errors import KafkaError

        messages = Messages()
        if self._unpositioned:
            self._unpositioned &= self.consumer.assignment()
            if self._unpositioned:
                self._seek_partitions(sorted(self._unpositioned))
        try:
            polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=records_max, update_offsets=True)
        except KafkaError as error:
            # An outage surfaces here as connection errors; the service reports it and retries.
            log.debug("poll failed", extra={"error": str(error)})
            return messages
        for partition, records in polled.items():
            count = len(records)
            messages.values += map(_record_value, records)
            messages.topics += [partition.topic] * count
            messages.partitions += [partition.partition] * count
            messages.offsets += map(_record_offset, records)
        return messages

    def commit_informational(self, next_offsets: dict[tuple[str, int], int]) -> None:
        """Tell Kafka how far the ledger got, for lag dashboards only; never read back."""
        if self.group_id is None:
            return
        from kafka import OffsetAndMetadata, TopicPartition

        try:
            self.consumer.commit_async(
                {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in next_offsets.items()}
            )
        except Exception as error:  # informational only: never let it stop ingestion
            log.debug("informational offset commit failed", extra={"error": str(error)})

    def lag(self) -> dict[tuple[str, int], int]:
        from kafka.errors import KafkaError

        lags = {}
        try:
            for partition in self.consumer.assignment():
                highwater = self.consumer.highwater(partition)
                if highwater is None:
                    continue
                position = self.consumer.position(partition, timeout_ms=1_000)
                if position is not None:
                    lags[(partition.topic, partition.partition)] = max(0, highwater - position)
        except KafkaError as error:
            log.debug("lag unknown while the broker is unreachable", extra={"error": str(error)})
        return lags

    def connected(self) -> bool:
        from kafka.errors import KafkaError

        client = self.consumer._client  # kafka-python exposes no public connectivity check
        try:
            return any(client.connected(broker.node_id) for broker in client.cluster.brokers())
        except KafkaError:
            return False

    def close(self) -> None:
        self.consumer.close(autocommit=False)
