"""`royalty ingest` on an authenticated Kafka: a real broker with a SASL/SCRAM listener and ACLs (issue 15).

One broker for the module (`KafkaBroker(sasl=True)`: StandardAuthorizer, no ACL means no access). Its users
are made through the admin listener, so no password is on a command line: `ingest` (SCRAM-SHA-512, READ and
DESCRIBE on the topic), `gateway` (SCRAM-SHA-256, WRITE) and `intruder` (DESCRIBE only). Ingest takes its
credentials from the environment and never prints them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaProducer
from kafka.errors import TopicAuthorizationFailedError
from pydantic import SecretStr

from ingest.kafka_security import KafkaSecurity
from ingest.sample import SampleShape, SampleTraffic
from ledger import Ledger
from tests.conftest import repo_root
from tests.support.kafka_broker import KafkaBroker, require_real_broker

topic = "secured-events"
# Test-only secrets, made per run; the assertions check none of them is ever printed.
passwords = {user: f"{user}-{os.urandom(8).hex()}" for user in ("ingest", "gateway", "intruder")}
mechanisms = {"ingest": "SCRAM-SHA-512", "gateway": "SCRAM-SHA-256", "intruder": "SCRAM-SHA-256"}
catch_up_s_max = 180


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    require_real_broker()
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka-sasl"), sasl=True)
    broker.start()
    try:
        broker.create_topic(topic, 2)
        for user, password in passwords.items():
            broker.add_scram_user(user, password, mechanisms[user])
        for user, operation in [
            ("ingest", "READ"), ("ingest", "DESCRIBE"), ("gateway", "WRITE"), ("gateway", "DESCRIBE"),
            ("intruder", "DESCRIBE"),
        ]:  # fmt: skip
            broker.allow(user, operation, "TOPIC", topic)
        yield broker
    finally:
        broker.stop()


def _security(user: str, password: str | None = None) -> KafkaSecurity:
    return KafkaSecurity("SASL_PLAINTEXT", mechanisms[user], user, SecretStr(password or passwords[user]))


def _producer(broker: KafkaBroker, user: str) -> KafkaProducer:
    return KafkaProducer(
        bootstrap_servers=broker.sasl_bootstrap_servers, acks="all", retries=0, request_timeout_ms=10_000,
        max_block_ms=10_000, **_security(user).client_options(),
    )  # fmt: skip


def _ingest(broker: KafkaBroker, lake: Path, password: str, user: str = "ingest") -> subprocess.CompletedProcess:
    environment = {
        **os.environ, "PYTHONPATH": str(repo_root), "ROYALTY_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "ROYALTY_KAFKA_SASL_MECHANISM": mechanisms[user], "ROYALTY_KAFKA_SASL_USERNAME": user,
        "ROYALTY_KAFKA_SASL_PASSWORD": password, "ROYALTY_BROKER_UNREACHABLE_S_MAX": "5",
    }  # fmt: skip
    command = [
        sys.executable, "-m", "royalty.cli", "ingest", "--bootstrap-servers", broker.sasl_bootstrap_servers,
        "--topic", topic, "--lake", str(lake), "--until-idle-s", "3", "--log-format", "text",
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=catch_up_s_max)


def test_a_producer_without_write_acl_is_refused_by_the_broker(sasl_broker: KafkaBroker) -> None:
    """The intruder authenticates, but the broker refuses its write: only ACL'd sources reach the topic."""
    producer = _producer(sasl_broker, "intruder")
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            producer.send(topic, b'{"forged": true}').get(timeout=30)
    finally:
        producer.close()


def _failed_logins(broker: KafkaBroker) -> int:
    """How many SCRAM logins the broker refused (its own log says so)."""
    log = broker.log_path.read_text(errors="replace")
    return sum("Failed authentication" in line and "invalid credentials" in line for line in log.splitlines())


def test_ingest_with_a_wrong_password_is_refused_by_the_broker_and_says_so_without_the_secret(
    sasl_broker: KafkaBroker, tmp_path: Path
) -> None:
    """The broker refuses the login (its log); kafka-python 3 sees only a closed connection, so ingest stops
    after `broker_unreachable_s_max` naming the login to check, and never the password it was given."""
    wrong = f"wrong-{os.urandom(8).hex()}"
    before = _failed_logins(sasl_broker)
    result = _ingest(sasl_broker, tmp_path / "lake", wrong)
    assert result.returncode == 75, result.stderr[-2000:]  # transient: a supervisor retries, an alert fires
    assert "accepts ingest's login (SCRAM-SHA-512 as `ingest`" in result.stderr
    assert wrong not in result.stdout + result.stderr
    assert _failed_logins(sasl_broker) > before


def test_ingest_consumes_with_its_scram_credentials_and_never_prints_them(
    sasl_broker: KafkaBroker, tmp_path: Path
) -> None:
    """The gateway (WRITE) produces; `royalty ingest`, configured from the environment, stores every message."""
    traffic = SampleTraffic(SampleShape(models=3, contributors=5, compute_providers=2), seed=5)
    messages = list(traffic.registry()) + list(traffic.metered(200))
    producer = _producer(sasl_broker, "gateway")
    try:
        for message in messages:
            producer.send(topic, message)
        producer.flush()
    finally:
        producer.close()
    result = _ingest(sasl_broker, tmp_path / "lake", passwords["ingest"])
    assert result.returncode == 0, result.stderr[-3000:]
    with Ledger.open_read_only(tmp_path / "lake") as reader:
        (events,) = reader.connection.execute("SELECT count(*) FROM lake.main.inference_metered").fetchone()
        stored = sum(reader.stored_offsets().values())
    assert (events, stored) == (200, len(messages))
    assert all(password not in result.stdout + result.stderr for password in passwords.values())


def test_ingest_as_a_user_without_read_acl_stops_naming_the_grants(sasl_broker: KafkaBroker, tmp_path: Path) -> None:
    """The intruder may DESCRIBE the topic but not READ it: ingest stops (exit 2), it does not spin."""
    result = _ingest(sasl_broker, tmp_path / "lake", passwords["intruder"], user="intruder")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "grant it READ and DESCRIBE on the topics" in result.stderr
    assert passwords["intruder"] not in result.stdout + result.stderr
