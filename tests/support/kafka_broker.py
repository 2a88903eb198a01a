"""A real Apache Kafka broker for tests, driven through `scripts/kafka-local`.

`KafkaBroker` runs one single-node KRaft broker on free loopback ports in a directory of its
own; the session fixture `kafka_broker` starts one for the whole test run. Under `CI=true`
a machine without Java or the broker jars fails the run; elsewhere the tests that need the
broker are skipped with the reason, so a newcomer without Java can still run the rest.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic

from tests.support.components import free_loopback_port, skip_or_fail

REPO_ROOT = Path(__file__).resolve().parents[2]
KAFKA_LOCAL = REPO_ROOT / "scripts" / "kafka-local"

# The script bounds its own waits (start 90 s, stop 30 s + 10 s after SIGKILL); these outer
# bounds only catch a script that hangs, so each one is its inner bound plus a margin.
INSTALL_TIMEOUT_S = 600  # a first install downloads ~45 MB of jars from Maven Central
START_TIMEOUT_S = 120
STOP_TIMEOUT_S = 60
# Creating a topic returns before every partition has a leader; a test that produces at once
# would see NotLeaderForPartition, so create_topic waits for leaders up to this bound.
TOPIC_READY_TIMEOUT_S = 30
TOPIC_READY_POLL_S = 0.1
ADMIN_REQUEST_TIMEOUT_MS = 10_000
HEAP_MB_DEFAULT = 512


class KafkaBrokerError(RuntimeError):
    """The local broker could not be installed, started, stopped or asked something."""




def script_environment() -> dict[str, str]:
    """The script's environment: its broker probe runs this interpreter (which has kafka-python),
    not whatever `python3` comes first on PATH."""
    return {**os.environ, "PYTHON": sys.executable}


def _run_script(args: list[str], timeout_s: float) -> str:
    try:
        done = subprocess.run(
            [str(KAFKA_LOCAL), *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            stdin=subprocess.DEVNULL,
            env=script_environment(),
        )
    except subprocess.TimeoutExpired as error:
        raise KafkaBrokerError(
            f"`scripts/kafka-local {' '.join(args)}` did not finish within {timeout_s} s"
        ) from error
    if done.returncode != 0:
        raise KafkaBrokerError(
            f"`scripts/kafka-local {' '.join(args)}` exited {done.returncode}:\n{done.stderr.strip()}"
        )
    return done.stdout.strip()


def missing_prerequisite() -> str | None:
    """Why the broker cannot run on this machine, or None when it can."""
    if shutil.which("java") is None:
        return "java is not on PATH (Kafka 4 needs Java 17+; apt-get install openjdk-17-jre-headless)"
    if not KAFKA_LOCAL.is_file():
        return f"{KAFKA_LOCAL} is missing"
    return None


def install_kafka() -> None:
    """Resolve the broker jars into the cache (seconds when already there)."""
    _run_script(["install"], INSTALL_TIMEOUT_S)


class KafkaBroker:
    """One single-node KRaft broker on loopback ports chosen at its first start.

    The ports and the data survive `stop`/`restart`, so clients keep their bootstrap address
    and see every record written before the restart.
    """

    def __init__(self, state_dir: Path, *, heap_mb: int = HEAP_MB_DEFAULT, sasl: bool = False) -> None:
        self.state_dir = Path(state_dir)
        self.heap_mb = heap_mb
        self.sasl = sasl
        self.port: int | None = None
        self.controller_port: int | None = None
        self.sasl_port: int | None = None
        self.start_duration_s: float | None = None

    @property
    def bootstrap_servers(self) -> str:
        """`host:port` of the broker's PLAINTEXT listener."""
        if self.port is None:
            raise KafkaBrokerError("the broker has not been started yet; call start() first")
        return f"127.0.0.1:{self.port}"

    @property
    def sasl_bootstrap_servers(self) -> str:
        """`host:port` of the SASL_PLAINTEXT (SCRAM) listener, where ACLs decide (a broker made with sasl=True)."""
        if self.sasl_port is None:
            raise KafkaBrokerError("the broker has no SASL listener; make it with sasl=True and start() it")
        return f"127.0.0.1:{self.sasl_port}"

    @property
    def log_path(self) -> Path:
        """The broker's own log, the first place to look when it misbehaves."""
        return self.state_dir / "logs" / "server.log"

    def start(self) -> None:
        """Start the broker and return once it answers a metadata request."""
        if self.port is None:
            self.port = free_loopback_port()
            self.controller_port = free_loopback_port()
            while self.controller_port == self.port:
                self.controller_port = free_loopback_port()
            if self.sasl:
                self.sasl_port = free_loopback_port()
                while self.sasl_port in (self.port, self.controller_port):
                    self.sasl_port = free_loopback_port()
        sasl_args = ["--sasl-port", str(self.sasl_port)] if self.sasl_port is not None else []
        started_s = time.monotonic()
        _run_script(
            [
                "start",
                "--dir", str(self.state_dir),
                "--port", str(self.port),
                "--controller-port", str(self.controller_port),
                "--heap-mb", str(self.heap_mb),
                "--stop-with-pid", str(os.getpid()),
                *sasl_args,
            ],
            START_TIMEOUT_S,
        )  # fmt: skip
        self.start_duration_s = time.monotonic() - started_s

    def stop(self) -> None:
        """Stop the broker (SIGTERM, SIGKILL after the script's bound); a no-op when stopped."""
        _run_script(["stop", "--dir", str(self.state_dir)], STOP_TIMEOUT_S)

    def restart(self) -> None:
        """Stop and start again on the same ports with the same data."""
        self.stop()
        self.start()

    def is_running(self) -> bool:
        """Whether the broker process of this state directory is alive."""
        done = subprocess.run(
            [str(KAFKA_LOCAL), "status", "--dir", str(self.state_dir)],
            capture_output=True,
            timeout=STOP_TIMEOUT_S,
            check=False,
            env=script_environment(),
        )
        return done.returncode == 0

    def admin(self) -> KafkaAdminClient:
        """A new admin client for this broker; the caller closes it."""
        return KafkaAdminClient(
            bootstrap_servers=self.bootstrap_servers, request_timeout_ms=ADMIN_REQUEST_TIMEOUT_MS
        )

    def add_scram_user(self, user: str, password: str, mechanism: str = "SCRAM-SHA-256") -> None:
        """Create (or change) a SCRAM user through the admin listener: the password is never on a command line."""
        from kafka.admin import ScramMechanism, UserScramCredentialUpsertion

        admin = self.admin()
        try:
            admin.alter_user_scram_credentials(
                [UserScramCredentialUpsertion(user, ScramMechanism[mechanism.replace("-", "_")], password)]
            )
        finally:
            admin.close()

    def allow(self, user: str, operation: str, resource_type: str, name: str) -> None:
        """Grant `User:<user>` one operation (READ, WRITE, DESCRIBE) on a TOPIC or GROUP, from any host."""
        from kafka.admin import ACL, ACLOperation, ACLPermissionType, ResourcePattern, ResourceType

        acl = ACL(
            f"User:{user}",
            "*",
            ACLOperation[operation],
            ACLPermissionType.ALLOW,
            ResourcePattern(ResourceType[resource_type], name),
        )
        admin = self.admin()
        try:
            result = admin.create_acls([acl])
            if result.get("failed"):
                raise KafkaBrokerError(f"creating ACL {acl} failed: {result['failed']}")
        finally:
            admin.close()

    def create_topic(self, name: str, partitions: int) -> None:
        """Create a topic (replication factor 1) and wait until every partition has a leader."""
        assert partitions >= 1, partitions
        admin = self.admin()
        try:
            admin.create_topics(
                [NewTopic(name=name, num_partitions=partitions, replication_factor=1)],
                timeout_ms=ADMIN_REQUEST_TIMEOUT_MS,
            )
            deadline_s = time.monotonic() + TOPIC_READY_TIMEOUT_S
            while not self._topic_has_leaders(admin, name, partitions):
                if time.monotonic() >= deadline_s:
                    raise KafkaBrokerError(
                        f"topic `{name}` has no leader for all {partitions} partitions after "
                        f"{TOPIC_READY_TIMEOUT_S} s; see {self.log_path}"
                    )
                time.sleep(TOPIC_READY_POLL_S)
        finally:
            admin.close()

    @staticmethod
    def _topic_has_leaders(admin: KafkaAdminClient, name: str, partitions: int) -> bool:
        described = admin.describe_topics([name])
        if not described or described[0].get("error_code", 0) != 0:
            return False
        # kafka-python 3 names the field `leader_id`, 2.x named it `leader`.
        leaders = [p.get("leader_id", p.get("leader", -1)) for p in described[0]["partitions"]]
        return len(leaders) == partitions and all(leader >= 0 for leader in leaders)

    def end_offsets(self, topic: str) -> dict[int, int]:
        """The next offset to be written in each partition of `topic`, by partition number."""
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap_servers, enable_auto_commit=False)
        try:
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                raise KafkaBrokerError(f"topic `{topic}` does not exist on {self.bootstrap_servers}")
            offsets = consumer.end_offsets([TopicPartition(topic, p) for p in sorted(partitions)])
            return {tp.partition: offset for tp, offset in offsets.items()}
        finally:
            consumer.close()


def require_real_broker() -> None:
    """Install the jars, or skip (fail under CI=true) when Java or the jars are missing."""
    reason = missing_prerequisite()
    if reason is None:
        try:
            install_kafka()
        except KafkaBrokerError as error:
            reason = f"the Kafka broker jars could not be installed: {error}"
    if reason is not None:
        skip_or_fail(f"no real Kafka broker: {reason}", f"CI=true and a real Kafka broker is required: {reason}")


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """One real Kafka broker for the whole session, stopped at its end.

    Missing Java or jars skip the tests that use it, except under CI=true, where they fail.
    A broker that is installed but will not start always fails.
    """
    require_real_broker()
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
