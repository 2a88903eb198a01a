"""`close-epoch` pushes its figures to a Pushgateway (setting `pushgateway_url`) in Prometheus' format.

The Pushgateway here is a small HTTP server that records what it is sent; the body is read with
prometheus_client's own parser.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from royalty.job_metrics import push_figures
from tests.conftest import royalty_command


class _Gateway(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, str, bytes]]] = []

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.command, self.path, body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def gateway() -> tuple[str, list]:
    _Gateway.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", _Gateway.received
    server.shutdown()


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(royalty_command(*args), capture_output=True, text=True, env={**os.environ, **(env or {})})


def test_close_epoch_pushes_its_figures(tmp_path: Path, gateway: tuple[str, list]) -> None:
    url, received = gateway
    sample, lake = tmp_path / "s.jsonl", str(tmp_path / "lake")
    assert _run("produce-sample", "--to-file", str(sample), "--events", "300").returncode == 0
    assert _run("ingest", "--from-file", str(sample), "--lake", lake).returncode == 0
    closed = _run("close-epoch", "--lake", lake, env={"ROYALTY_PUSHGATEWAY_URL": url})
    assert closed.returncode == 0, closed.stderr
    assert "warning" not in closed.stderr
    [(method, path, body)] = received
    assert (method, path) == ("PUT", "/metrics/job/royalty_close_epoch")
    families = {family.name: family for family in text_string_to_metric_families(body.decode())}
    events = families["royalty_close_epoch_event_count"]
    assert events.type == "gauge" and events.samples[0].value == 300
    assert families["royalty_close_epoch_epoch"].samples[0].value == 1
    assert families["royalty_close_epoch_fee_micros"].samples[0].value > 0


def test_an_unreachable_gateway_is_a_warning_not_a_failure() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again below: nothing listens there
    warning = push_figures(
        "settle", {"epoch": 3, "total_units": 10, "root": "0xab"}, f"http://user:secret@127.0.0.1:{port}"
    )
    assert warning is not None and "could not push" in warning and "secret" not in warning
