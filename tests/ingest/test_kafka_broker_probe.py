"""The test broker's readiness probe runs this interpreter, not the first `python3` on PATH."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import kafka_broker


def test_kafka_local_is_given_this_interpreter_for_its_probe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pins the PYTHON handed to scripts/kafka-local: a `python3` on PATH without kafka-python
    (a bare system Python beside a virtualenv) would otherwise fail every probe until the start timeout."""
    calls: list[dict[str, str] | None] = []

    def run(*args: object, **kwargs: object) -> subprocess.CompletedProcess[str]:
        calls.append(kwargs.get("env"))  # type: ignore[arg-type]
        return subprocess.CompletedProcess([], 0, "", "")

    monkeypatch.setattr(kafka_broker.subprocess, "run", run)
    monkeypatch.setenv("PATH", str(tmp_path))  # no python3 at all on PATH
    kafka_broker.install_kafka()
    kafka_broker.KafkaBroker(tmp_path).is_running()
    assert len(calls) == 2
    assert all(env is not None and env["PYTHON"] == sys.executable for env in calls)
    assert all(env is not None and env["PATH"] == str(tmp_path) for env in calls)
