"""The catalog password never reaches output, and analysts read through a SELECT-only role, on real PostgreSQL.

The session's PostgreSQL server trusts every role, except here: members of `royalty_password_login`
must log in with their password (scram-sha-256, a pg_hba.conf line this module adds), so a
password in a DSN, a passfile or a grant is really checked. Every output of the commands (stdout,
stderr, JSON log lines, tracebacks) is searched for the password.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import psycopg
import pytest

from ingest.sample import SampleTraffic
from ledger import Ledger
from ledger.connection import LedgerLocation, connect
from tests.conftest import repo_root, royalty_command
from tests.ledger.helpers import batch_of

if TYPE_CHECKING:
    from tests.support.postgres import PostgresServer

pytest_plugins = ("tests.support.postgres",)

PASSWORD_GROUP = "royalty_password_login"
HBA_LINE = f"host all +{PASSWORD_GROUP} 127.0.0.1/32 scram-sha-256"
WRITER_PASSWORD = "Wr1ter-" + uuid.uuid4().hex  # unique: found in an output only if it leaked
OUTAGE_WAIT_S_MAX = 60
POLL_S = 0.2
BATCH_RECORDS = 10


@dataclass(frozen=True)
class Secured:
    """A ledger on a password-protected PostgreSQL catalog."""

    server: PostgresServer
    database: str
    writer: str
    data_path: str

    @property
    def writer_dsn(self) -> str:
        return f"postgres:dbname={self.database} host=127.0.0.1 port={self.server.port} user={self.writer} " + (
            f"password={WRITER_PASSWORD}"
        )

    @property
    def admin_dsn(self) -> str:
        return f"postgres:dbname={self.database} host=127.0.0.1 port={self.server.port} user=postgres"


def _hba(server: PostgresServer) -> Path:
    return server.data_dir / "pg_hba.conf"


@pytest.fixture(scope="module")
def secured(postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """A writer role with a password, its own database, and a ledger it wrote two batches into."""
    suffix = uuid.uuid4().hex[:8]
    writer, database = f"writer_{suffix}", f"secured_{suffix}"
    postgres_server.psql(
        f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{PASSWORD_GROUP}') "
        f"THEN CREATE ROLE {PASSWORD_GROUP} NOLOGIN; END IF; END $$",
        database="postgres",
    )
    postgres_server.psql(
        f"CREATE ROLE {writer} LOGIN PASSWORD '{WRITER_PASSWORD}' IN ROLE {PASSWORD_GROUP}", database="postgres"
    )
    postgres_server.psql(f'CREATE DATABASE "{database}" OWNER {writer}', database="postgres")
    hba = _hba(postgres_server)
    original = hba.read_text()
    if HBA_LINE not in original:
        hba.write_text(HBA_LINE + "\n" + original)
        postgres_server.psql("SELECT pg_reload_conf()", database="postgres")
    secured = Secured(postgres_server, database, writer, str(tmp_path_factory.mktemp("secured") / "data"))
    values = list(SampleTraffic(seed=5).registry()) + list(SampleTraffic(seed=5).metered(20))
    with Ledger.open(secured.writer_dsn, secured.data_path) as ledger:
        ledger.append(*batch_of(values, topic="seed", first_offset=0))
    try:
        yield secured
    finally:
        hba.write_text(hba.read_text().replace(HBA_LINE + "\n", ""))
        if postgres_server.is_running():
            postgres_server.psql("SELECT pg_reload_conf()", database="postgres")


def _environment(**variables: str) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("ROYALTY_", "PG"))}
    return {**environment, "PYTHONPATH": str(repo_root), **variables}


def _run(*args: str, **variables: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        royalty_command(*args), capture_output=True, text=True, env=_environment(**variables), timeout=300
    )


def _passfile(path: Path, secured: Secured, user: str, password: str) -> Path:
    path.write_text(f"127.0.0.1:{secured.server.port}:{secured.database}:{user}:{password}\n")
    path.chmod(0o600)
    return path


def test_print_attach_leaves_the_password_out_and_its_attach_works_with_a_passfile(
    secured: Secured, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--print-attach` with the writer's DSN (from ROYALTY_LAKE, not argv) prints no password; the printed
    statements attach in a bare DuckDB whose libpq finds the password in PGPASSFILE, and read the ledger."""
    result = _run("sql", "--print-attach", ROYALTY_LAKE=secured.writer_dsn, ROYALTY_DATA_PATH=secured.data_path)
    assert result.returncode == 0, result.stderr
    assert WRITER_PASSWORD not in result.stdout + result.stderr
    assert "password=" not in result.stdout and "passfile (~/.pgpass or PGPASSFILE)" in result.stdout
    monkeypatch.setenv("PGPASSFILE", str(_passfile(tmp_path / "pgpass", secured, secured.writer, WRITER_PASSWORD)))
    client = duckdb.connect()
    for statement in client.extract_statements(result.stdout):
        client.execute(statement)
    (batches,) = client.execute("SELECT count(*) FROM lake.main.ingest_batch").fetchone()
    assert batches >= 1


def test_a_service_and_a_passfile_keep_the_password_off_every_command_line(secured: Secured, tmp_path: Path) -> None:
    """`ROYALTY_LAKE=postgres:service=NAME` (connection in PGSERVICEFILE, password in PGPASSFILE): the commands
    connect with no password in argv, the environment's DSN or the output."""
    services = tmp_path / "pg_service.conf"
    services.write_text(
        f"[royalty_test]\nhost=127.0.0.1\nport={secured.server.port}\ndbname={secured.database}\n"
        f"user={secured.writer}\n"
    )
    passfile = _passfile(tmp_path / "pgpass", secured, secured.writer, WRITER_PASSWORD)
    variables = {
        "ROYALTY_LAKE": "postgres:service=royalty_test", "ROYALTY_DATA_PATH": secured.data_path,
        "PGSERVICEFILE": str(services), "PGPASSFILE": str(passfile),
    }  # fmt: skip
    answered = _run("sql", "--format", "json", "SELECT count(*) AS batches FROM lake.main.ingest_batch", **variables)
    assert answered.returncode == 0, answered.stderr
    assert json.loads(answered.stdout)[0]["batches"] >= 1
    verified = _run("verify", **variables)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert WRITER_PASSWORD not in answered.stdout + answered.stderr + verified.stdout + verified.stderr
    passfile.write_text("")  # no password anywhere: PostgreSQL refuses, and the error says it was the login
    refused = _run("verify", **variables)
    assert refused.returncode == 2 and "refused the login" in refused.stderr, refused.stderr


def test_connection_errors_and_a_password_flag_never_print_the_password(secured: Secured) -> None:
    """A refused login, an unreachable catalog and a `--lake` flag holding the password: exit 2 with a clear
    message, the password masked (`password=***`) everywhere, and a warning that argv is public."""
    wrong = "Wr0ng-" + uuid.uuid4().hex
    refused = _run(
        "sql", "SELECT 1", ROYALTY_LAKE=secured.writer_dsn.replace(WRITER_PASSWORD, wrong),
        ROYALTY_DATA_PATH=secured.data_path,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "the catalog refused the login" in refused.stderr and "password authentication failed" in refused.stderr
    assert "password=***" in refused.stderr
    assert wrong not in refused.stdout + refused.stderr
    unreachable_dsn = secured.writer_dsn.replace(f"port={secured.server.port}", "port=1")
    flagged = _run("verify", "--lake", unreachable_dsn, "--data-path", secured.data_path)
    assert flagged.returncode != 0, flagged.stdout + flagged.stderr
    assert "--lake carries a credential" in flagged.stderr and "ROYALTY_LAKE" in flagged.stderr
    assert "password=***" in flagged.stderr and "Traceback" not in flagged.stderr
    assert WRITER_PASSWORD not in flagged.stdout + flagged.stderr


def test_a_catalog_outage_during_ingest_logs_no_password(secured: Secured, tmp_path: Path) -> None:
    """`royalty ingest` (DSN with password in ROYALTY_LAKE) appends a batch, PostgreSQL stops, the next batch
    fails and is retried (logged with the masked DSN), PostgreSQL starts, ingest finishes: no output holds the
    password, though the DSN is quoted in the outage lines."""
    values = list(SampleTraffic(seed=6).metered(2 * BATCH_RECORDS))
    log_path = tmp_path / "ingest.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            royalty_command("ingest", "--from-file", "-", "--batch-records-max", str(BATCH_RECORDS)),
            stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
            env=_environment(ROYALTY_LAKE=secured.writer_dsn, ROYALTY_DATA_PATH=secured.data_path),
        )  # fmt: skip
    assert process.stdin is not None
    try:
        process.stdin.write(b"\n".join(values[:BATCH_RECORDS]) + b"\n")
        process.stdin.flush()
        _wait_for(lambda: "ingested batch" in log_path.read_text() or _batches(secured) >= 2, "the first batch")
        secured.server.stop()
        try:
            process.stdin.write(b"\n".join(values[BATCH_RECORDS:]) + b"\n")
            process.stdin.flush()
            _wait_for(lambda: "ledger catalog unreachable" in log_path.read_text(), "the outage log line")
        finally:
            secured.server.start()
        _wait_for(lambda: "ledger available again" in log_path.read_text(), "the recovery log line")
        process.stdin.close()
        assert process.wait(timeout=OUTAGE_WAIT_S_MAX) == 0, log_path.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
    output = log_path.read_text()
    outage_lines = [line for line in output.splitlines() if "catalog unreachable" in line]
    assert outage_lines and all(json.loads(line)["level"] == "error" for line in outage_lines)
    assert "password=***" in output
    assert WRITER_PASSWORD not in output


def _batches(secured: Secured) -> int:
    try:
        with psycopg.connect(secured.admin_dsn.removeprefix("postgres:"), connect_timeout=5) as database:
            (table_id,) = database.execute(
                "SELECT table_id FROM ducklake_table WHERE table_name = 'ingest_batch'"
            ).fetchone()
            (table,) = database.execute(
                "SELECT table_name FROM ducklake_inlined_data_tables WHERE table_id = %s", [table_id]
            ).fetchone()
            return int(database.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    except psycopg.Error:
        return 0


def _wait_for(condition, what: str) -> None:
    deadline_s = time.monotonic() + OUTAGE_WAIT_S_MAX
    while not condition():
        if time.monotonic() > deadline_s:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(POLL_S)


def test_grant_reader_role_reads_through_royalty_sql_and_postgresql_refuses_its_writes(
    secured: Secured, tmp_path: Path
) -> None:
    """`royalty catalog grant-reader` makes a SELECT-only login (password in a 0600 passfile, none printed).
    As that role PostgreSQL itself refuses UPDATE (even with the session made read-write), CREATE TABLE, and
    DuckDB's `postgres_execute`; `royalty sql` answers through it, also from tables the writer creates later."""
    reader = f"reader_{uuid.uuid4().hex[:8]}"
    passfile = tmp_path / "analyst.pgpass"
    granted = _run(
        "catalog", "grant-reader", "--role", reader, "--writer-role", secured.writer, "--passfile", str(passfile),
        ROYALTY_LAKE=secured.admin_dsn,
    )  # fmt: skip
    assert granted.returncode == 0, granted.stderr
    password = passfile.read_text().strip().rsplit(":", 1)[1]
    assert oct(passfile.stat().st_mode & 0o777) == "0o600"
    assert password not in granted.stdout + granted.stderr
    reader_dsn = granted.stdout.strip()
    assert reader_dsn.startswith("postgres:") and f"user={reader}" in reader_dsn and "passfile=" in reader_dsn
    secured.server.psql(f"GRANT {PASSWORD_GROUP} TO {reader}", database="postgres")  # its password is checked
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(f"{secured.admin_dsn.removeprefix('postgres:')} user={reader} password=wrong").close()

    with psycopg.connect(reader_dsn.removeprefix("postgres:"), autocommit=True) as database:
        offsets_table = _inlined_table(database, "ingest_offset")
        assert database.execute(f"SELECT count(*) FROM {offsets_table}").fetchone()[0] >= 1
        database.execute("SET default_transaction_read_only = off")  # past the role's read-only default
        for write in (
            f"UPDATE {offsets_table} SET next_offset = next_offset + 1000000",
            "UPDATE ducklake_snapshot SET snapshot_time = now()",
            "CREATE TABLE public.analyst_scratch (x int)",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
                database.execute(write)

    location = LedgerLocation.parse(reader_dsn, secured.data_path)
    analyst = connect(location, read_only=True)
    with pytest.raises(duckdb.Error, match=r"read-only transaction|permission denied"):
        analyst.execute(
            "SELECT * FROM postgres_execute('__ducklake_metadata_lake', "
            f"'COMMIT; UPDATE {offsets_table} SET next_offset = next_offset + 1000000')"
        )
    analyst.close()

    with psycopg.connect(secured.writer_dsn.removeprefix("postgres:"), autocommit=True) as database:
        database.execute("CREATE TABLE public.created_after_grant (x int)")
        database.execute("INSERT INTO public.created_after_grant VALUES (7)")
    with psycopg.connect(reader_dsn.removeprefix("postgres:")) as database:
        assert database.execute("SELECT x FROM public.created_after_grant").fetchall() == [(7,)]

    answered = _run(
        "sql", "--format", "json", "SELECT count(*) AS batches FROM lake.main.ingest_batch",
        ROYALTY_READER_LAKE=reader_dsn, ROYALTY_DATA_PATH=secured.data_path,
    )  # fmt: skip
    assert answered.returncode == 0, answered.stderr
    assert json.loads(answered.stdout)[0]["batches"] >= 1
    attach = _run("sql", "--print-attach", ROYALTY_READER_LAKE=reader_dsn, ROYALTY_DATA_PATH=secured.data_path)
    assert attach.returncode == 0 and f"user={reader}" in attach.stdout and password not in attach.stdout
    report = _run("report", "--epoch", "1", "--out", str(tmp_path / "r.html"),
                  ROYALTY_READER_LAKE=reader_dsn, ROYALTY_DATA_PATH=secured.data_path)  # fmt: skip
    assert report.returncode == 2 and "no epoch has been closed yet" in " ".join(report.stderr.split()), report.stderr


def _inlined_table(database: psycopg.Connection, table: str) -> str:
    (table_id,) = database.execute("SELECT table_id FROM ducklake_table WHERE table_name = %s", [table]).fetchone()
    (name,) = database.execute(
        "SELECT table_name FROM ducklake_inlined_data_tables WHERE table_id = %s ORDER BY schema_version DESC",
        [table_id],
    ).fetchone()
    return name


def test_grant_reader_refuses_an_embedded_ledger_a_privileged_role_and_a_shared_passfile(
    secured: Secured, tmp_path: Path
) -> None:
    """No role on a SQLite catalog (exit 2, pointing at file permissions); the writer role, or a role that may
    create databases, is left unchanged; a passfile others can read is refused before any role is touched."""
    embedded = _run("catalog", "grant-reader", "--role", "analyst", ROYALTY_LAKE=str(tmp_path / "lake"))
    assert embedded.returncode == 2 and "read-only access to its folder" in " ".join(embedded.stderr.split())
    assert not (tmp_path / "lake").exists()
    as_writer = _run(
        "catalog", "grant-reader", "--role", secured.writer, "--writer-role", secured.writer,
        ROYALTY_LAKE=secured.admin_dsn,
    )  # fmt: skip
    assert as_writer.returncode == 2 and "is a writer" in as_writer.stderr
    privileged = f"creator_{uuid.uuid4().hex[:8]}"
    secured.server.psql(f"CREATE ROLE {privileged} LOGIN CREATEDB", database="postgres")
    refused = _run("catalog", "grant-reader", "--role", privileged, ROYALTY_LAKE=secured.admin_dsn)
    assert refused.returncode == 2 and "left unchanged" in " ".join(refused.stderr.split())
    assert secured.server.psql(f"SELECT rolcreatedb FROM pg_roles WHERE rolname = '{privileged}'").strip() == "t"
    shared = tmp_path / "shared.pgpass"
    shared.write_text("")
    shared.chmod(0o644)
    reader = f"reader_{uuid.uuid4().hex[:8]}"
    loose = _run("catalog", "grant-reader", "--role", reader, "--passfile", str(shared), ROYALTY_LAKE=secured.admin_dsn)
    assert loose.returncode == 2 and "readable by others" in " ".join(loose.stderr.split())
    assert shared.read_text() == ""
    assert secured.server.psql(f"SELECT count(*) FROM pg_roles WHERE rolname = '{reader}'").strip() == "0"
