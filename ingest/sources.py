"""Where ingest reads messages from: Kafka topics, or JSON-lines files for backfills.

A source yields messages as parallel lists (values, topics, partitions, offsets) and can be
moved to the positions stored in the ledger, which are the only positions that count.
"""

import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

from ingest import constants, native_records
from ingest.errors import IngestBrokerUnreachableError, IngestConfigError, IngestSourceRacedError
from ingest.kafka_security import KafkaSecurity
from ledger import LedgerError
from ledger.batch import FileSourcePosition, LineDigest

if TYPE_CHECKING:
    from ledger import Ledger

log = logging.getLogger(__name__)

# Both kafka-python's ConsumerRecord and the native decoder's Record have these attributes.
_record_value = attrgetter("value")
_record_offset = attrgetter("offset")


def _value_size(value: bytes | None) -> int:
    return 0 if value is None else len(value)


def _within_budget(values: list[bytes | None], bytes_max: int, at_least_one: bool) -> int:
    """How many of `values`, from the first, fit in `bytes_max` (one at least if asked: a batch always advances)."""
    total = 0
    for count, value in enumerate(values):
        total += _value_size(value)
        if total > bytes_max:
            return max(int(at_least_one), count)
    return len(values)


@dataclass
class Messages:
    """Messages as parallel lists, in the order read."""

    values: list[bytes | None] = field(default_factory=list)  # None: a record with a null value
    topics: list[str] = field(default_factory=list)
    partitions: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    size_bytes: int = 0  # of the values, for the batch's byte budget
    # Read from files or stdin only (empty for Kafka): per message, the SHA-256 state of its source's
    # bytes up to the end of its line, and where that line ends.
    line_digests: list[LineDigest] = field(default_factory=list)
    line_ends: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.values)

    def extend(self, other: "Messages") -> None:
        self.values += other.values
        self.topics += other.topics
        self.partitions += other.partitions
        self.offsets += other.offsets
        self.size_bytes += other.size_bytes
        self.line_digests += other.line_digests
        self.line_ends += other.line_ends


class Source(Protocol):
    def poll(self, records_max: int, timeout_ms: int, bytes_max: int | None = None) -> Messages:
        """Up to `records_max` messages, and no more once they hold `bytes_max` bytes (at least one)."""
        ...

    def seek(self, stored_offsets: dict[tuple[str, int], int]) -> None: ...

    def lag(self) -> dict[tuple[str, int], int]: ...

    def connected(self) -> bool: ...

    def close(self) -> None: ...


class FileSource:
    """CloudEvents as JSON lines from files or stdin (`-`), for backfills.

    A file source is known by its content, not its name: each append records how far a source was
    read (its key, the next line, the size and SHA-256 of the bytes before that line). A file is
    resumed only where a recorded source's bytes are still its first bytes (an appended log), under
    whatever name it is read now; otherwise it is a new source, read from its first line, and what
    the ledger already holds is dropped there: events by id, dead letters by their line's content.
    Stdin is never resumed by position: it is read in full each time, and fingerprinted as it is read.
    Keys are `file:<absolute path>` or `file:-`, with `#2`, `#3`, ... for the next new source under the
    same name; partition 0 and the line index stand in for Kafka's partition and offset.
    """

    def __init__(
        self,
        paths: Sequence[str],
        ledger: "Ledger",
        stdin: IO[bytes] | None = None,
        report: Callable[[str], None] | None = None,  # default: the log
    ) -> None:
        self._ledger = ledger
        self._report = report
        self._inputs: list[_FileInput] = []
        for path in paths:
            if path == "-":
                if stdin is None:
                    raise IngestConfigError("--from-file `-` reads stdin, and this process has none")
                self._inputs.append(_FileInput("-", None, stdin))
                continue
            resolved = Path(path).expanduser().resolve()
            if not resolved.is_file():
                raise IngestConfigError(f"--from-file `{path}` does not exist or is not a file")
            self._inputs.append(_FileInput(path, resolved, resolved.open("rb")))
        self._current = 0
        self._positioned = False
        # A message read but past the byte budget of the batch polled: the first of the next one.
        self._held: tuple[bytes, int, hashlib._Hash, int] | None = None

    def seek(self, stored_offsets: dict[tuple[str, int], int]) -> None:
        if self._positioned:
            # Called again only after another writer stored offsets for a key this process reads.
            raise IngestSourceRacedError(sorted({item.key for item in self._inputs}))
        self._positioned = True
        recorded = self._ledger.file_sources()
        legacy = {
            topic: offset
            for (topic, partition), offset in stored_offsets.items()
            if topic.startswith(_key_prefix) and partition == 0 and topic not in recorded
        }
        used = set(recorded) | set(legacy)
        for item in self._inputs:
            if item.path is None:
                self._start_stdin(item, used, legacy)
            else:
                self._position_file(item, recorded, legacy, used)
            used.add(item.key)

    def _start_stdin(self, item: "_FileInput", used: set[str], legacy: dict[str, int]) -> None:
        item.key = _new_key(f"{_key_prefix}-", used)
        old_key = _key_prefix + "-"
        ignored = (
            f"; the position recorded for stdin before fingerprints (`{old_key}`, line {legacy[old_key]:,}) is ignored"
            if old_key in legacy
            else ""
        )
        self._note(
            item,
            f"stdin: skipped 0 lines: stdin is never resumed by position; read in full as source `{item.key}`, "
            f"events already in the ledger are dropped by id and dead letters by their line's content{ignored}",
        )

    def _position_file(
        self,
        item: "_FileInput",
        recorded: dict[str, FileSourcePosition],
        legacy: dict[str, int],
        used: set[str],
    ) -> None:
        own_key = f"{_key_prefix}{item.path}"
        size_bytes = os.fstat(item.handle.fileno()).st_size
        candidates = [
            position
            for key, position in recorded.items()
            if key not in self._claimed() and position.prefix_size_bytes <= size_bytes
        ]
        states = _prefix_states(item.handle, sorted({c.prefix_size_bytes for c in candidates}))
        matches = [
            c
            for c in candidates
            if c.prefix_size_bytes in states
            and states[c.prefix_size_bytes].hexdigest() == c.prefix_sha256
            and (c.prefix_size_bytes == size_bytes or _byte_before(item.handle, c.prefix_size_bytes) == b"\n")
        ]
        if matches:
            best = max(matches, key=lambda c: (c.prefix_size_bytes, c.next_offset, c.topic == own_key))
            item.resume(best.topic, best.next_offset, best.prefix_size_bytes, states[best.prefix_size_bytes])
            under = "" if best.source_name == item.name else f", read before as `{best.source_name}`"
            self._note(
                item,
                f"`{item.name}`: skipped {best.next_offset:,} lines already read: its first "
                f"{best.prefix_size_bytes:,} bytes are unchanged (SHA-256 {best.prefix_sha256[:16]}...) since "
                f"source `{best.topic}` read them{under}; reading on from line {best.next_offset + 1:,}",
            )
            return
        if own_key in legacy and own_key not in self._claimed() and self._trust_once(item, own_key, legacy[own_key]):
            return
        item.handle.seek(0)
        item.key = _new_key(own_key, used)
        earlier = recorded.get(own_key) or next(
            (p for k, p in sorted(recorded.items()) if k.startswith(own_key + "#") and p.source_name == item.name),
            None,
        )
        if earlier is None and own_key not in legacy:
            why = "a source not read before"
        elif earlier is None:
            why = "its content does not reach the position recorded for this path before fingerprints"
        else:
            why = f"its content differs from what source `{earlier.topic}` read from this path: " + _why_changed(
                earlier, size_bytes, states
            )
        self._note(
            item,
            f"`{item.name}`: skipped 0 lines: {why}; read in full as source `{item.key}`"
            + ("" if earlier is None and own_key not in legacy else
               "; events already in the ledger are dropped by id and dead letters by their line's content"),
            warning=earlier is not None or own_key in legacy,
        )

    def _trust_once(self, item: "_FileInput", key: str, next_offset: int) -> bool:
        """Resume at a position recorded before fingerprints, fingerprinting it now: the one unchecked resume."""
        item.handle.seek(0)
        state = hashlib.sha256()
        size_bytes = 0
        for _ in range(next_offset):
            line = item.handle.readline()
            if not line:
                return False
            state.update(line)
            size_bytes += len(line)
        position = FileSourcePosition(key, next_offset, size_bytes, state.hexdigest(), item.name)
        self._ledger.adopt_file_position(position)
        item.resume(key, next_offset, size_bytes, state)
        self._note(
            item,
            f"`{item.name}`: skipped {next_offset:,} lines already read, by the position recorded for "
            f"`{key}` before file fingerprints existed: trusted this once without a check. Its first "
            f"{size_bytes:,} bytes are fingerprinted now (SHA-256 {position.prefix_sha256[:16]}...); later runs "
            f"resume only if they are unchanged",
            warning=True,
        )
        return True

    def _claimed(self) -> set[str]:
        return {item.key for item in self._inputs if item.key}

    def _note(self, item: "_FileInput", text: str, warning: bool = False) -> None:
        item.note = text
        if self._report is not None:
            self._report(text)
        else:
            (log.warning if warning else log.info)(text, extra={"source": item.key})

    @property
    def notes(self) -> list[str]:
        """What `seek` decided for each input: lines skipped as already read, and why."""
        return [item.note for item in self._inputs]

    def poll(self, records_max: int, timeout_ms: int, bytes_max: int | None = None) -> Messages:
        messages = Messages()
        while self._current < len(self._inputs) and len(messages) < records_max:
            item = self._inputs[self._current]
            line = self._held or self._read_line(item)
            self._held = None
            if line is None:
                self._current += 1
                continue
            value, index, state, end = line
            if bytes_max is not None and messages and messages.size_bytes + len(value) > bytes_max:
                self._held = line  # the first message of the next batch: this one is full
                break
            messages.values.append(value)
            messages.topics.append(item.key)
            messages.partitions.append(0)
            messages.offsets.append(index)
            messages.size_bytes += len(value)
            messages.line_digests.append(state)
            messages.line_ends.append(end)
        return messages

    def _read_line(self, item: "_FileInput") -> "tuple[bytes, int, hashlib._Hash, int] | None":
        """The next message of `item`: its bytes, line index, SHA-256 state and end; None at its end."""
        while True:
            line = item.handle.readline(constants.file_line_bytes_held_max)
            if not line:
                return None
            index = item.line_index
            item.line_index += 1
            item.state.update(line)
            item.size_bytes += len(line)
            if len(line) == constants.file_line_bytes_held_max and not line.endswith(b"\n"):
                return _read_through(item, line), index, item.state.copy(), item.size_bytes
            value = line.rstrip(b"\r\n")
            if value.strip():  # blank lines are layout, not messages
                return value, index, item.state.copy(), item.size_bytes

    def file_positions(self, messages: Messages) -> list[FileSourcePosition]:
        """How far `messages` read each file source, with the fingerprint of its bytes up to there."""
        names = {item.key: item.name for item in self._inputs}
        last: dict[str, int] = {}
        for index in range(len(messages) - 1, -1, -1):
            topic = messages.topics[index]
            if topic not in last:
                last[topic] = index
                if len(last) == len(names):
                    break
        return [
            FileSourcePosition(
                topic,
                messages.offsets[index] + 1,
                messages.line_ends[index],
                messages.line_digests[index].hexdigest(),
                names[topic],
            )
            for topic, index in sorted(last.items())
        ]

    def exhausted(self) -> bool:
        return self._current >= len(self._inputs)

    def lag(self) -> dict[tuple[str, int], int]:
        return {}

    def connected(self) -> bool:
        return True

    def close(self) -> None:
        for item in self._inputs:
            if item.path is not None:
                item.handle.close()


_key_prefix = "file:"


@dataclass
class _FileInput:
    """One `--from-file` argument while it is read."""

    name: str  # as given
    path: Path | None  # None: stdin
    handle: IO[bytes]
    key: str = ""
    line_index: int = 0
    size_bytes: int = 0
    state: "hashlib._Hash" = field(default_factory=hashlib.sha256)
    note: str = ""

    def resume(self, key: str, line_index: int, size_bytes: int, state: "hashlib._Hash") -> None:
        self.key, self.line_index, self.size_bytes, self.state = key, line_index, size_bytes, state.copy()
        self.handle.seek(size_bytes)


class LongLine(bytes):
    """The first bytes of a line too long to be a message; `len()`, `size_bytes` and `sha256` are the whole line's.

    The decoder rejects it by its length, and its dead letter records the whole line's size and digest.
    """

    size_bytes: int
    sha256: str

    def __len__(self) -> int:
        return self.size_bytes


def _read_through(item: "_FileInput", head: bytes) -> LongLine:
    """Read the rest of a long line (hashing it into the source's fingerprint), holding only `head`."""
    whole = hashlib.sha256(head)
    size_bytes = len(head)
    while True:
        chunk = item.handle.readline(constants.file_hash_chunk_bytes)
        if not chunk:
            break
        item.state.update(chunk)
        item.size_bytes += len(chunk)
        ends = chunk.endswith(b"\n")
        content = chunk.rstrip(b"\r\n") if ends else chunk
        whole.update(content)
        size_bytes += len(content)
        if ends:
            break
    long_line = LongLine(head)
    long_line.size_bytes, long_line.sha256 = size_bytes, whole.hexdigest()
    return long_line


def _new_key(base: str, used: set[str]) -> str:
    """`base`, or `base#2`, `#3`, ...: the first not used yet (the same in every process, so two
    processes reading one new source meet at the offsets fence rather than both storing it)."""
    if base not in used:
        return base
    number = 2
    while f"{base}#{number}" in used:
        number += 1
    return f"{base}#{number}"


def _prefix_states(handle: IO[bytes], sizes: list[int]) -> dict[int, "hashlib._Hash"]:
    """SHA-256 states of the file's first `size` bytes for each of the ascending `sizes`, in one pass."""
    states: dict[int, hashlib._Hash] = {}
    state = hashlib.sha256()
    handle.seek(0)
    done = 0
    for size in sizes:
        while done < size:
            chunk = handle.read(min(constants.file_hash_chunk_bytes, size - done))
            if not chunk:
                return states
            state.update(chunk)
            done += len(chunk)
        states[size] = state.copy()
    return states


def _byte_before(handle: IO[bytes], position: int) -> bytes:
    handle.seek(position - 1)
    return handle.read(1)


def _why_changed(earlier: FileSourcePosition, size_bytes: int, states: dict[int, "hashlib._Hash"]) -> str:
    if earlier.prefix_size_bytes > size_bytes:
        return f"it holds {size_bytes:,} bytes, fewer than the {earlier.prefix_size_bytes:,} read before"
    state = states.get(earlier.prefix_size_bytes)
    if state is not None and state.hexdigest() != earlier.prefix_sha256:
        return f"its first {earlier.prefix_size_bytes:,} bytes changed"
    return "the line read last had no line end then, and has grown since"


def _login_refused(bootstrap_servers: str, security: KafkaSecurity, error: Exception) -> IngestConfigError:
    return IngestConfigError(
        f"the Kafka broker at {bootstrap_servers} refused ingest's credentials ({security.describe()}): "
        f"{type(error).__name__}; check kafka_sasl_username, the password in ROYALTY_KAFKA_SASL_PASSWORD and the "
        "user's ACLs (READ on the topics and the group, DESCRIBE on the topics)"
    )


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
        security: KafkaSecurity | None = None,
        unreachable_s_max: float = constants.broker_unreachable_s_max_default,
    ) -> None:
        from kafka import KafkaConsumer
        from kafka.errors import AuthorizationError, KafkaError, SaslAuthenticationFailedError

        security = security or KafkaSecurity()
        client_options = security.client_options()  # checked before any connection; never logged

        self.topics = list(topics)
        self.group_id = group_id
        self._stored_offsets = stored_offsets
        self._on_revoked = on_revoked
        # Partitions assigned while the ledger could not tell their offsets: paused until it can.
        self._unpositioned: set = set()
        backoff_s = constants.broker_backoff_s_min
        started = time.monotonic()
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
                    # One attempt never outlasts the wait for a broker never reached (kafka-python's default: 30 s).
                    bootstrap_timeout_ms=int(min(30.0, unreachable_s_max) * 1000),
                    **client_options,
                )
                break
            except (SaslAuthenticationFailedError, AuthorizationError) as error:
                raise _login_refused(bootstrap_servers, security, error) from None
            except KafkaError:  # no broker reachable yet: kafka-python 3 raises its base error
                # (kafka-python 3 reports a SCRAM login the broker refused the same way: the broker closes the
                # connection, and bootstrap times out; the error names the credentials when there are some.)
                waited_s = time.monotonic() - started
                if waited_s + backoff_s > unreachable_s_max:
                    raise IngestBrokerUnreachableError(bootstrap_servers, waited_s, security.login()) from None
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
                raise IngestConfigError(
                    f"topic `{topic}` does not exist on the broker (or has no partitions, or ingest's Kafka user "
                    "may not DESCRIBE it: check its ACLs)"
                )
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

    def poll(self, records_max: int, timeout_ms: int, bytes_max: int | None = None) -> Messages:
        from kafka.errors import AuthorizationError, KafkaError

        messages = Messages()
        if self._unpositioned:
            self._unpositioned &= self.consumer.assignment()
            if self._unpositioned:
                self._seek_partitions(sorted(self._unpositioned))
        try:
            polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=records_max, update_offsets=True)
        except AuthorizationError as error:  # an ACL refused: retrying cannot cure it
            raise IngestConfigError(
                f"the Kafka broker refused ingest's user a read ({type(error).__name__}); grant it READ and "
                "DESCRIBE on the topics (and READ on the consumer group when --group-id is set)"
            ) from None
        except KafkaError as error:
            # An outage surfaces here as connection errors; the service reports it and retries.
            log.debug("poll failed", extra={"error": str(error)})
            return messages
        for partition, records in polled.items():
            values = list(map(_record_value, records))
            if bytes_max is not None:
                count = _within_budget(values, bytes_max - messages.size_bytes, at_least_one=not messages)
                if count < len(records):
                    # Past the byte budget: the rest is fetched again by the next poll, not held here.
                    self.consumer.seek(partition, records[count].offset)
                    records, values = records[:count], values[:count]
            size_bytes = sum(map(_value_size, values))
            count = len(records)
            messages.values += values
            messages.topics += [partition.topic] * count
            messages.partitions += [partition.partition] * count
            messages.offsets += map(_record_offset, records)
            messages.size_bytes += size_bytes
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
