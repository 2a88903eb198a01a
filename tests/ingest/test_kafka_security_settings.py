"""Kafka security settings (issue 15): from settings and the environment to kafka-python's arguments, secrets
never shown; a combination kafka-python would reject late or ignore is refused before any connection."""

import os
import subprocess

import pytest
from pydantic import SecretStr

from ingest.errors import IngestConfigError
from ingest.kafka_security import KafkaSecurity
from royalty.common import kafka_security, registry_rules
from royalty.config import ConfigError, load_settings
from settlement.engine.authority import policy_type
from tests.conftest import royalty_command

secret = "s3cr3t-not-for-logs"


def test_sasl_scram_and_tls_settings_from_the_environment_become_kafka_python_arguments(monkeypatch) -> None:
    for name, value in {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "ingest", "KAFKA_SASL_PASSWORD": secret, "KAFKA_SSL_CAFILE": "/etc/kafka/ca.pem",
        "KAFKA_SSL_CERTFILE": "/etc/kafka/client.pem", "KAFKA_SSL_KEYFILE": "/etc/kafka/client.key",
        "KAFKA_SSL_PASSWORD": "key-" + secret,
    }.items():  # fmt: skip
        monkeypatch.setenv(f"ROYALTY_{name}", value)
    settings = load_settings({})
    security = kafka_security(settings)
    assert security.client_options() == {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "ingest",
        "sasl_plain_password": secret, "ssl_check_hostname": True, "ssl_cafile": "/etc/kafka/ca.pem",
        "ssl_certfile": "/etc/kafka/client.pem", "ssl_keyfile": "/etc/kafka/client.key",
        "ssl_password": "key-" + secret,
    }  # fmt: skip
    for shown in (repr(settings), str(settings), repr(security), security.describe(), str(security.login())):
        assert secret not in shown
    assert security.describe() == "SASL_SSL, SCRAM-SHA-512 as `ingest`, client certificate"


def test_plain_over_plaintext_is_the_default_and_sends_no_credentials() -> None:
    assert KafkaSecurity().client_options() == {"security_protocol": "PLAINTEXT"}
    plain = KafkaSecurity("SASL_PLAINTEXT", "PLAIN", "gw", SecretStr(secret)).client_options()
    sasl = (plain["sasl_mechanism"], plain["sasl_plain_username"], plain["sasl_plain_password"])
    assert sasl == ("PLAIN", "gw", secret)


@pytest.mark.parametrize(
    ("security", "needs"),
    [
        (KafkaSecurity("SASL_SSL", None, "u", SecretStr("p")), "kafka_sasl_mechanism"),
        (KafkaSecurity("SASL_PLAINTEXT", "PLAIN", "u", None), "kafka_sasl_password"),
        (KafkaSecurity("PLAINTEXT", "PLAIN", "u", SecretStr("p")), "SASL_SSL"),
        (KafkaSecurity("PLAINTEXT", ssl_cafile="/ca.pem"), "SSL or SASL_SSL"),
        (KafkaSecurity("SSL", ssl_certfile="/c.pem"), "kafka_ssl_keyfile"),
    ],
)
def test_an_incomplete_or_contradictory_combination_is_refused_naming_the_setting(security, needs) -> None:
    with pytest.raises(IngestConfigError, match=needs):
        security.client_options()


def test_ingest_refuses_a_bad_combination_before_connecting_and_never_prints_the_password(tmp_path) -> None:
    environment = {"ROYALTY_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "ROYALTY_KAFKA_SASL_PASSWORD": secret}
    result = subprocess.run(
        royalty_command("ingest", "--bootstrap-servers", "127.0.0.1:1", "--lake", str(tmp_path / "lake")),
        capture_output=True, text=True, timeout=120, env={**os.environ, **environment},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "needs kafka_sasl_mechanism" in result.stderr
    assert secret not in result.stdout + result.stderr
    assert not (tmp_path / "lake").exists()  # refused before the ledger was opened


def test_registry_settings_become_the_rules_and_an_unknown_event_type_is_refused(monkeypatch) -> None:
    monkeypatch.setenv("ROYALTY_REGISTRY_SOURCES", '{"ai.split-policy.set.v1": ["//governance"]}')
    monkeypatch.setenv("ROYALTY_REVERSAL_SOURCES", "//billing,//refunds")
    rules = registry_rules(load_settings({"policy_notice_s": 3600}))
    assert rules.listed(policy_type, "//governance") and not rules.listed(policy_type, "//gateway")
    assert rules.reversal_sources == ("//billing", "//refunds") and rules.policy_notice_s == 3600
    monkeypatch.setenv("ROYALTY_REGISTRY_SOURCES", '{"ai.split-policy.v1": ["//governance"]}')
    with pytest.raises(ConfigError, match="not registry event types"):
        load_settings({})
    monkeypatch.delenv("ROYALTY_REGISTRY_SOURCES")
    with pytest.raises(ConfigError, match="policy_notice_s"):
        load_settings({"policy_notice_s": -1})
