"""A real PostgreSQL server for tests: the DuckLake catalog that several ledger writers share.

`PostgresServer` runs Debian's PostgreSQL binaries (initdb, pg_ctl) in a temporary data
directory on a free loopback port with trust authentication; the session fixture
`postgres_server` starts one for the whole test run. PostgreSQL refuses to run as root, so
when the tests run as root the server runs as the `postgres` OS user. Under `CI=true` missing
binaries fail the run; elsewhere the tests that need the server are skipped with the reason.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.components import free_loopback_port, session_server

BINARY_GLOB = "/usr/lib/postgresql/*/bin"
SERVER_USER = "postgres"
DATABASE_DEFAULT = "royalty"
INITDB_TIMEOUT_S = 120
# pg_ctl waits for the server itself (-w -t); the subprocess bound only catches a hang.
START_WAIT_S = 60
STOP_WAIT_S = 30
COMMAND_MARGIN_S = 30
READY_POLL_S = 0.1
# A catalog for a handful of concurrent test writers; the defaults suit a laptop, not a 2-core CI box.
SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "unix_socket_directories": "",
    "max_connections": "50",
    "shared_buffers": "32MB",
    "fsync": "off",  # test data is thrown away; a power cut is not a test case
    "synchronous_commit": "off",
    "full_page_writes": "off",
}


class PostgresServerError(RuntimeError):
    """The local PostgreSQL server could not be initialised, started, stopped or asked something."""


def binary_directory() -> Path | None:
    """The newest Debian PostgreSQL `bin` folder with initdb, pg_ctl and psql, or None."""
    found = [
        Path(folder)
        for folder in glob.glob(BINARY_GLOB)
        if all((Path(folder) / name).is_file() for name in ("initdb", "pg_ctl", "psql"))
    ]
    if not found:
        return None
    return max(found, key=lambda folder: int(folder.parent.name) if folder.parent.name.isdigit() else 0)


def missing_prerequisite() -> str | None:
    """Why a PostgreSQL server cannot run on this machine, or None when it can."""
    if binary_directory() is None:
        return f"no PostgreSQL server binaries under {BINARY_GLOB} (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return f"running as root and there is no `{SERVER_USER}` OS user to run the server as"
        if shutil.which("runuser") is None:
            return "running as root and `runuser` is not on PATH"
    return None


class PostgresServer:
    """One PostgreSQL server with one database, on a loopback port chosen at its first start.

    The port and the data survive `stop`/`start`, so a catalog URL stays valid across a restart.
    """

    def __init__(self, base_dir: Path, database: str = DATABASE_DEFAULT) -> None:
        """`base_dir` must be reachable by the server's OS user (not under pytest's 0700 temp folders)."""
        binaries = binary_directory()
        if binaries is None:
            raise PostgresServerError(missing_prerequisite() or "no PostgreSQL binaries")
        self.binaries = binaries
        self.base_dir = Path(base_dir)
        self.data_dir = self.base_dir / "pgdata"
        self.log_path = self.base_dir / "postgres.log"
        self.database = database
        self.port: int | None = None
        self._as_root = os.geteuid() == 0

    @property
    def catalog_url(self) -> str:
        """The libpq key=value catalog string `Ledger.open` takes, with the `postgres:` prefix."""
        return f"postgres:{self.dsn}"

    @property
    def dsn(self) -> str:
        """libpq connection parameters for the test database."""
        if self.port is None:
            raise PostgresServerError("the server has not been started yet; call start() first")
        return f"dbname={self.database} host=127.0.0.1 port={self.port} user={SERVER_USER}"

    def _command(self, program: str, *args: str) -> list[str]:
        command = [str(self.binaries / program), *args]
        return ["runuser", "-u", SERVER_USER, "--", *command] if self._as_root else command

    def _run(self, command: list[str], timeout_s: float) -> str:
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout_s, check=False, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired as error:
            raise PostgresServerError(f"`{' '.join(command)}` did not finish within {timeout_s} s") from error
        if done.returncode != 0:
            raise PostgresServerError(
                f"`{' '.join(command)}` exited {done.returncode}:\n{done.stderr.strip() or done.stdout.strip()}"
                f"\n(server log: {self.log_path})"
            )
        return done.stdout

    def _initdb(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if self._as_root:
            user = pwd.getpwnam(SERVER_USER)
            os.chown(self.base_dir, user.pw_uid, user.pw_gid)
        self._run(
            self._command(
                "initdb", "-D", str(self.data_dir), "-U", SERVER_USER, "--auth=trust",
                "--encoding=UTF8", "--locale=C", "--no-sync",
            ),
            INITDB_TIMEOUT_S,
        )  # fmt: skip

    def start(self) -> None:
        """Start the server (initialising it on the first start) and return once it accepts queries."""
        first_start = self.port is None
        if not self.data_dir.is_dir():
            self._initdb()
        if self.port is None:
            self.port = free_loopback_port()
        # pg_ctl hands these to the server through a shell, hence the quoting.
        options = " ".join(f"-c {name}='{value}'" for name, value in {**SERVER_SETTINGS, "port": self.port}.items())
        self._run(
            self._command(
                "pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_path),
                "-w", "-t", str(START_WAIT_S), "-o", options,
            ),
            START_WAIT_S + COMMAND_MARGIN_S,
        )  # fmt: skip
        self._wait_ready()
        if first_start and not self._database_exists():
            self.psql(f'CREATE DATABASE "{self.database}"', database="postgres")

    def _wait_ready(self) -> None:
        deadline_s = time.monotonic() + START_WAIT_S
        while True:
            try:
                self.psql("SELECT 1", database="postgres")
                return
            except PostgresServerError:
                if time.monotonic() >= deadline_s:
                    raise
                time.sleep(READY_POLL_S)

    def _database_exists(self) -> bool:
        found = self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'", database="postgres")
        return found.strip() == "1"

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`fast`: roll back open transactions; `immediate`: like a crash); no-op when stopped."""
        if not self.is_running():
            return
        self._run(
            self._command("pg_ctl", "stop", "-D", str(self.data_dir), "-m", mode, "-w", "-t", str(STOP_WAIT_S)),
            STOP_WAIT_S + COMMAND_MARGIN_S,
        )

    def restart(self) -> None:
        """Stop and start again on the same port with the same data."""
        self.stop()
        self.start()

    def is_running(self) -> bool:
        """Whether a server is running on this data directory."""
        if not self.data_dir.is_dir():
            return False
        done = subprocess.run(
            self._command("pg_ctl", "status", "-D", str(self.data_dir)),
            capture_output=True, timeout=COMMAND_MARGIN_S, check=False,
        )  # fmt: skip
        return done.returncode == 0

    def psql(self, sql: str, database: str | None = None) -> str:
        """Run one SQL command with psql as the superuser; return its unaligned, tuples-only output."""
        if self.port is None:
            raise PostgresServerError("the server has not been started yet; call start() first")
        command = [
            str(self.binaries / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
            "-h", "127.0.0.1", "-p", str(self.port), "-U", SERVER_USER, "-d", database or self.database,
            "-c", sql,
        ]  # fmt: skip
        return self._run(command, COMMAND_MARGIN_S)

    def create_database(self, name: str) -> str:
        """Create a further database on this server; return its `postgres:` catalog string."""
        self.psql(f'CREATE DATABASE "{name}"', database="postgres")
        return f"postgres:dbname={name} host=127.0.0.1 port={self.port} user={SERVER_USER}"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the whole session, stopped at its end.

    Missing binaries skip the tests that use it, except under CI=true, where they fail.
    A server that is installed but will not start always fails.
    """
    with session_server("PostgreSQL server", missing_prerequisite(), "royalty-postgres-", PostgresServer) as server:
        yield server
