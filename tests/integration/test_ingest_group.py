"""Two `royalty ingest` processes in one consumer group, on a PostgreSQL DuckLake catalog and a real Kafka broker."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import pytest

from ingest.producer import produce_sample_traffic, sample_messages
from ledger import Ledger
from ledger.verify import verify
from tests.conftest import repo_root

if TYPE_CHECKING:
    from tests.support.kafka_broker import KafkaBroker
    from tests.support.postgres import PostgresServer
    from tests.support.seaweedfs import SeaweedServer

pytest_plugins = ("tests.support.kafka_broker", "tests.support.postgres", "tests.support.seaweedfs")

_environment = {**os.environ, "PYTHONPATH": str(repo_root)}
_no_mistakes = {"duplicates_ppm": 0, "conflicts_ppm": 0, "invalid_ppm": 0}
_shape = {"models": 20, "contributors": 200}
_tables = {
    "ai.inference.metered.v1": "inference_metered",
    "ai.contributor.registered.v1": "contributor_registered",
    "ai.model.registered.v1": "model_registered",
    "ai.split-policy.set.v1": "split_policy_set",
}
PARTITIONS = 6
# Bounds on waiting for the group and the ledger; generous for two busy cores. The group's
# session timeout (10 s, ingest/sources.py) is what a takeover after SIGKILL must wait for.
GROUP_STABLE_S_MAX = 120  # 60 s ran out once under the full suite on two cores (as in test_catalog_outage.py)
CATCH_UP_S_MAX = 120
STOP_S_MAX = 60
POLL_S = 0.5


class _Identity(msgspec.Struct):
    id: str
    type: str


def _expected_ids(events: int, seed: int) -> dict[str, set[str]]:
    ids: dict[str, set[str]] = {}
    for _kind, message in sample_messages(events, seed=seed, **_no_mistakes, **_shape):
        identity = msgspec.json.decode(message, type=_Identity)
        ids.setdefault(identity.type, set()).add(identity.id)
    return ids


class _Ingest:
    """One `royalty ingest --group-id` process, its JSON log in a file, and the partitions it was last given."""

    def __init__(
        self, broker: KafkaBroker, topic: str, group: str, catalog: str, data_path: str, log: Path,
        environment: dict[str, str],
    ) -> None:  # fmt: skip
        self.log_path = log
        self._log = log.open("w")
        command = [
            sys.executable, "-m", "royalty.cli", "ingest", "--bootstrap-servers", broker.bootstrap_servers,
            "--topic", topic, "--group-id", group, "--lake", catalog, "--data-path", data_path,
            "--batch-records-max", "5000", "--batch-latency-ms-max", "300", "--until-idle-s", "300",
            "--log-format", "json",
        ]  # fmt: skip
        self.process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=self._log)
        self.writer = f"{socket.gethostname()}:{self.process.pid}"

    def assignments(self) -> list[set[int]]:
        """Every partition set this process was positioned on, in order (a rebalance listener's log lines)."""
        found = []
        for line in self.log_path.read_text().splitlines():
            entry = json.loads(line) if line.startswith("{") else {}
            if entry.get("message") == "partitions positioned at the ledger's offsets":
                found.append({int(name.rsplit("/", 1)[1]) for name in entry["partitions"]})
        return found

    def current(self) -> set[int]:
        assignments = self.assignments()
        return assignments[-1] if assignments else set()

    def finish(self) -> None:
        self._log.close()


def _wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(POLL_S)
    raise AssertionError(f"{what}: not within {timeout_s} s")


# The scale-out layout: the data files in an S3 bucket (a real SeaweedFS), shared by processes on several
# machines (issue 20). The same run on a shared local folder is the nightly depth.


@pytest.mark.parametrize("storage", [pytest.param("folder", marks=pytest.mark.nightly), "s3"])
def test_two_ingest_processes_in_a_group_split_partitions_and_take_over_after_sigkill(
    kafka_broker: KafkaBroker, postgres_server: PostgresServer, tmp_path: Path, request: pytest.FixtureRequest,
    storage: str,
) -> None:  # fmt: skip
    """Issue 3's group acceptance: two processes split 6 partitions; one SIGKILLed mid-stream; every event once."""
    topic, group = f"group-{uuid.uuid4().hex[:8]}", "royalty-ingest-test"
    catalog = postgres_server.create_database(f"group_{uuid.uuid4().hex[:8]}")
    environment = dict(_environment)
    if storage == "s3":
        seaweedfs: SeaweedServer = request.getfixturevalue("seaweedfs")
        data_path = seaweedfs.data_path(f"group-{uuid.uuid4().hex[:8]}")
        environment.update(seaweedfs.environment())
        monkeypatch: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
        for name, value in seaweedfs.environment().items():  # this process's reads of the ledger
            monkeypatch.setenv(name, value)
        from ledger import object_store

        monkeypatch.setattr(object_store, "_configured", None)
    else:
        data_path = str(tmp_path / "data")
    kafka_broker.create_topic(topic, PARTITIONS)

    def offsets() -> dict[tuple[str, int], int]:
        with Ledger.open_read_only(catalog, data_path) as reader:
            return reader.stored_offsets()

    def ends() -> dict[tuple[str, int], int]:
        return {(topic, p): end for p, end in kafka_broker.end_offsets(topic).items()}

    def produce(events: int, seed: int) -> None:
        produce_sample_traffic(events, kafka_broker.bootstrap_servers, topic, None, seed=seed, **_no_mistakes, **_shape)

    # Both start on a new, empty catalog at once, as an operator scaling out from nothing would.
    doomed = _Ingest(kafka_broker, topic, group, catalog, data_path, tmp_path / "doomed.log", environment)
    survivor = _Ingest(kafka_broker, topic, group, catalog, data_path, tmp_path / "survivor.log", environment)
    try:
        # 1. The group settles with the six partitions split between the two processes.
        _wait_for(
            lambda: doomed.current() and survivor.current() and doomed.current() | survivor.current() == set(range(6))
            and not doomed.current() & survivor.current(),
            GROUP_STABLE_S_MAX, "the two processes never split the partitions",
        )  # fmt: skip
        doomed_partitions = doomed.current()
        assert len(doomed_partitions) == 3, (doomed.assignments(), survivor.assignments())

        # 2. Both ingest their share of the first traffic.
        produce(20_000, seed=21)
        first_ends = ends()
        _wait_for(lambda: offsets() == first_ends, CATCH_UP_S_MAX, "the group did not ingest the first traffic")

        # 3. SIGKILL one process while the second traffic flows, once it has committed part of it.
        producer = threading.Thread(target=produce, args=(20_000, 22))
        producer.start()
        _wait_for(
            lambda: any(offsets().get((topic, p), 0) > first_ends[(topic, p)] for p in doomed_partitions),
            CATCH_UP_S_MAX, "the doomed process committed nothing of the second traffic",
        )  # fmt: skip
        doomed.process.send_signal(signal.SIGKILL)
        doomed.process.wait(timeout=STOP_S_MAX)
        producer.join()
        # Traffic produced after the kill reaches its partitions only through a takeover.
        produce(10_000, seed=23)
        final_ends = ends()
        _wait_for(lambda: offsets() == final_ends, CATCH_UP_S_MAX, "the survivor did not take over and catch up")
        assert survivor.current() == set(range(6)), survivor.assignments()

        survivor.process.send_signal(signal.SIGTERM)
        assert survivor.process.wait(timeout=STOP_S_MAX) == 0, survivor.log_path.read_text()[-3000:]
        # The broker never went away: an outage reported here stalled the group (a member that
        # believes it is cut off sleeps instead of polling, and so misses rebalances).
        for ingest in (doomed, survivor):
            assert "kafka broker unreachable" not in ingest.log_path.read_text(), ingest.log_path
    finally:
        for ingest in (doomed, survivor):
            if ingest.process.poll() is None:
                ingest.process.kill()
                ingest.process.wait()
            ingest.finish()

    expected: dict[str, set[str]] = {}
    for events, seed in ((20_000, 21), (20_000, 22), (10_000, 23)):
        for event_type, ids in _expected_ids(events, seed).items():
            expected.setdefault(event_type, set()).update(ids)
    with Ledger.open_read_only(catalog, data_path) as reader:
        stored = {
            event_type: Counter(
                row[0] for row in reader.connection.execute(f"SELECT event_id FROM lake.main.{table}").fetchall()
            )
            for event_type, table in _tables.items()
        }
        (dead_letters,) = reader.connection.execute("SELECT count(*) FROM lake.main.dead_letter").fetchone()
        partitions_by_writer = dict(
            reader.connection.execute(
                "SELECT b.writer, list(DISTINCT o.kafka_partition ORDER BY o.kafka_partition) "
                "FROM lake.main.ingest_offset o JOIN lake.main.ingest_batch b USING (ingest_batch_id) GROUP BY ALL"
            ).fetchall()
        )
        stored_offsets = reader.stored_offsets()
        files = [
            path
            for (path,) in reader.connection.execute(
                "SELECT data_file FROM ducklake_list_files('lake', 'inference_metered')"
            ).fetchall()
        ]
        report = verify(reader)
    assert files and all(path.startswith(data_path.rstrip("/") + "/") for path in files), files[:3]
    for event_type, ids in expected.items():
        assert set(stored[event_type]) == ids, event_type
        assert max(stored[event_type].values()) == 1, f"{event_type} stored more than once"
    assert dead_letters == 0
    assert stored_offsets == final_ends
    assert set(partitions_by_writer[doomed.writer]) >= doomed_partitions
    assert partitions_by_writer[survivor.writer] == list(range(6)), "the survivor never wrote the doomed partitions"
    assert report.ok, report.problems
