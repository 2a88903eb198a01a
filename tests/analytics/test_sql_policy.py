"""Issue 13: an analyst cannot write, change settings or read outside the ledger through `royalty sql`.

Every escape an analyst found is tried on a settled ledger on a SQLite and on a PostgreSQL catalog, through
the same path as `royalty sql` (views defined, engine locked down, the statement policy): each is refused by
name, no file of the ledger changes, nothing is created, and no engine setting moves. The lock-down settings
are also shown to hold on their own, for the statements a notebook runs from `--print-attach`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import Ledger, define_views, run_query
from ledger.sql_policy import QueryRefusedError, lock_down
from tests.analytics.conftest import build_settled_ledger
from tests.conftest import royalty_command

pytest_plugins = ("tests.support.postgres",)

memory_mb = 512
threads = 1


@dataclass
class AnalystLake:
    """A settled ledger and an analyst's locked-down reader of it."""

    backend: str
    location: str
    data_path: str
    reader: Ledger
    outside: Path  # a folder outside the ledger, where nothing may appear

    def cli_options(self) -> list[str]:
        return ["--lake", self.location, "--data-path", self.data_path]

    def catalog_file(self) -> Path | None:
        return Path(self.location) / "catalog.sqlite" if self.backend == "sqlite" else None

    def parquet_file(self) -> Path:
        return sorted(Path(self.data_path, "main", "contributor_registered").rglob("*.parquet"))[0]

    def digests(self) -> dict[str, str]:
        """Every file of the ledger (catalog and data folder) with its content hash."""
        files = sorted(Path(self.data_path).rglob("*"))
        catalog = self.catalog_file()
        files += [catalog] if catalog else []
        return {str(path): hashlib.sha256(path.read_bytes()).hexdigest() for path in files if path.is_file()}


@pytest.fixture(scope="module")
def sqlite_lake() -> Iterator[Path]:
    """A settled embedded ledger, root-owned and world-readable (0755/0644), outside pytest's root-only temp tree."""
    base = Path(tempfile.mkdtemp(prefix="royalty-analyst-"))
    build_settled_ledger(base / "lake")
    for path in [base, *base.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    yield base / "lake"
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def analyst_lake(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AnalystLake]:
    root = tmp_path_factory.mktemp(f"policy-{request.param}")
    if request.param == "sqlite":
        lake: Path = request.getfixturevalue("sqlite_lake")
        location, data_path = str(lake), str(lake / "data")
    else:
        server = request.getfixturevalue("postgres_server")
        location, data_path = server.create_database(f"policy_{uuid.uuid4().hex[:12]}"), str(root / "data")
        build_settled_ledger(location, data_path)
    reader = Ledger.open_read_only(location, data_path)
    define_views(reader)
    lock_down(reader, memory_mb, threads)
    (root / "outside").mkdir()
    yield AnalystLake(request.param, location, data_path, reader, root / "outside")
    reader.close()


def _settings(ledger: Ledger) -> list[tuple]:
    return ledger.connection.execute("SELECT name, value FROM duckdb_settings() ORDER BY name").fetchall()


# (test id, the SQL an analyst sent, a fragment the refusal must name). {catalog}, {parquet}, {data} and
# {outside} are the SQLite catalog file (on PostgreSQL, a new file in the data folder), a contributor
# registration Parquet file, the data folder and a folder outside the ledger.
copy_in_explain = "COPY statement inside EXPLAIN"
escapes = [
    ("explain-analyze-copy-over-catalog", "EXPLAIN ANALYZE COPY (SELECT 1) TO '{catalog}'", copy_in_explain),
    (
        "explain-analyze-copy-over-parquet",
        "EXPLAIN ANALYZE COPY (SELECT * REPLACE ('0x' || repeat('ab', 20) AS payout_address) FROM "
        "lake.main.contributor_registered) TO '{parquet}' (FORMAT parquet)",
        copy_in_explain,
    ),
    ("explain-analyze-copy-into-data", "EXPLAIN ANALYZE COPY payables TO '{data}x.csv'", copy_in_explain),
    ("explain-analyze-set", "EXPLAIN ANALYZE SET enable_external_access = true", "SET statement inside EXPLAIN"),
    ("explain-set-threads", "EXPLAIN SET threads = 64", "SET statement inside EXPLAIN"),
    ("explain-analyze-load", "EXPLAIN ANALYZE LOAD sqlite", "LOAD statement inside EXPLAIN"),
    ("read-csv", "SELECT * FROM read_csv('/etc/passwd')", "table function `read_csv`"),
    ("read-text", "SELECT content FROM read_text('/etc/passwd')", "table function `read_text`"),
    ("read-parquet-data-file", "SELECT * FROM read_parquet('{parquet}')", "table function `read_parquet`"),
    ("glob", "SELECT * FROM glob('/root/*')", "table function `glob`"),
    ("file-literal", "SELECT * FROM '/etc/passwd'", "file `/etc/passwd` as a table"),
    ("file-literal-from-first", "FROM '{parquet}'", "as a table"),
    ("copy", "COPY (SELECT * FROM payables) TO '{outside}/payables.csv'", "COPY statement"),
    ("attach", "ATTACH '{outside}/other.duckdb' AS other", "ATTACH statement"),
    ("set", "SET enable_external_access = true", "SET statement"),
    ("reset", "RESET lock_configuration", "RESET statement"),
    ("pragma", "PRAGMA enable_profiling", "PRAGMA statement"),
    ("call", "CALL pragma_version()", "CALL statement"),
    ("install", "INSTALL httpfs", "INSTALL statement"),
    ("load", "LOAD httpfs", "LOAD statement"),
    ("postgres-execute", "FROM postgres_execute('__ducklake_metadata_lake', 'COMMIT; SELECT 1')", "`postgres_execute`"),
    ("sqlite-scan", "SELECT * FROM sqlite_scan('{catalog}', 'ducklake_snapshot')", "`sqlite_scan`"),
    ("catalog-table", "SELECT * FROM __ducklake_metadata_lake.ducklake_snapshot", "`__ducklake_metadata_lake"),
    ("ducklake-function", "SELECT * FROM ducklake_snapshots('lake')", "use the view `snapshots`"),
    ("setting-read", "SELECT current_setting('allowed_directories')", "`current_setting`"),
    ("query-string", "SELECT * FROM query('COPY payables TO ''/tmp/x.csv''')", "table function `query`"),
    ("write-after-read", "SELECT 1; DELETE FROM lake.main.ingest_offset", "DELETE statement"),
    ("cte-named-as-file", "WITH \"{parquet}\" AS (SELECT 1) SELECT * FROM payables", "CTE name"),
]  # fmt: skip


@pytest.mark.parametrize(("sql", "refused"), [escape[1:] for escape in escapes], ids=[e[0] for e in escapes])
def test_escape_is_refused_and_changes_nothing(analyst_lake: AnalystLake, sql: str, refused: str) -> None:
    """The statement is refused by name before it runs; the ledger's files and the engine's settings are as before."""
    lake = analyst_lake
    catalog = lake.catalog_file() or Path(lake.data_path, "catalog.sqlite")
    text = sql.format(catalog=catalog, parquet=lake.parquet_file(), data=lake.data_path, outside=lake.outside)
    files, settings = lake.digests(), _settings(lake.reader)
    with pytest.raises(QueryRefusedError, match="read-only") as refusal:
        run_query(lake.reader, text)
    assert refused in str(refusal.value)
    assert lake.digests() == files
    assert _settings(lake.reader) == settings
    assert list(lake.outside.iterdir()) == []
    assert run_query(lake.reader, "SELECT count(*) AS n FROM contributor_registrations").to_pylist()[0]["n"] > 0


_script_escapes = [
    "COPY payables TO '{outside}/p.csv'",
    "SET threads = 64",
    "RESET enable_external_access",
    "LOAD sqlite",
    "INSTALL httpfs",
    "ATTACH '{outside}/o.duckdb' AS o",
    "PRAGMA threads = 64",
    "CALL pragma_version()",
    "SELECT * FROM read_text('/etc/passwd')",
    "FROM '/etc/passwd'",
    "SELECT * FROM glob('{outside}/*')",
    "SELECT * FROM payables, read_blob('{data}**')",
    "SELECT (SELECT count(*) FROM read_csv('/etc/passwd')) AS n FROM epochs",
]
_wrappers = [
    "{s}",
    "EXPLAIN {s}",
    "EXPLAIN ANALYZE {s}",
    "explain analyze {s}",
    "/* a note */ EXPLAIN ANALYZE {s}",
    "-- a note\nEXPLAIN {s}",
    "EXPLAIN\n\tANALYZE\n{s}",
    "EXPLAIN ANALYZE /* a note */ {s}",
]
_reads = ["SELECT count(*) FROM epochs", "FROM payables LIMIT 1", "EXPLAIN ANALYZE SELECT 1"]


@settings(max_examples=40)
@given(
    escape=st.sampled_from(_script_escapes),
    wrapper=st.sampled_from(_wrappers),
    before=st.lists(st.sampled_from(_reads), max_size=2),
    after=st.lists(st.sampled_from(_reads), max_size=2),
)
def test_an_escape_anywhere_in_a_script_is_refused(
    analyst_lake: AnalystLake, escape: str, wrapper: str, before: list[str], after: list[str]
) -> None:
    """Property: however an escape is wrapped (EXPLAIN, ANALYZE, comments, case) and wherever it stands among
    reads, the whole script is refused and nothing changes."""
    lake = analyst_lake
    statement = wrapper.format(s=escape.format(outside=lake.outside, data=lake.data_path))
    files, settings_before = lake.digests(), _settings(lake.reader)
    # DuckDB's parser itself rejects a few (`EXPLAIN ATTACH`): nothing runs either way.
    with pytest.raises((QueryRefusedError, duckdb.ParserException)):
        run_query(lake.reader, ";\n".join([*before, statement, *after]))
    assert lake.digests() == files
    assert _settings(lake.reader) == settings_before
    assert list(lake.outside.iterdir()) == []


def test_postgres_execute_cannot_move_stored_offsets(analyst_lake: AnalystLake) -> None:
    """The reported attack: `postgres_execute` on the catalog with the writer's connection; offsets stay put."""
    if analyst_lake.backend != "postgres":
        pytest.skip("postgres_execute reaches a PostgreSQL catalog only")
    lake = analyst_lake

    def stored() -> tuple[dict, int]:
        with Ledger.open_read_only(lake.location, lake.data_path) as fresh:
            return fresh.stored_offsets(), fresh.current_snapshot()

    before = stored()
    attack = (
        "SELECT * FROM postgres_execute('__ducklake_metadata_lake', 'COMMIT; UPDATE ducklake_snapshot "
        "SET snapshot_id = snapshot_id + 1000000')"
    )
    with pytest.raises(QueryRefusedError, match="`postgres_execute`"):
        run_query(lake.reader, attack)
    assert stored() == before


def test_lock_down_alone_stops_files_and_settings(analyst_lake: AnalystLake) -> None:
    """Without the statement policy (a notebook runs `--print-attach`), the engine settings still hold."""
    connection = analyst_lake.reader.connection
    with pytest.raises(duckdb.PermissionException):
        connection.execute("SELECT * FROM read_text('/etc/passwd')")
    with pytest.raises(duckdb.PermissionException):
        connection.execute(f"COPY (SELECT 1) TO '{analyst_lake.outside}/x.csv'")
    for statement in ("SET enable_external_access = true", "SET allowed_directories = ['/']", "SET threads = 64"):
        with pytest.raises(duckdb.InvalidInputException, match="locked"):
            connection.execute(statement)
    assert connection.execute("SELECT current_setting('threads')").fetchone()[0] == threads
    assert list(analyst_lake.outside.iterdir()) == []
    (events,) = connection.execute("SELECT count(*) FROM inference_events").fetchone()
    assert events > 0


def test_import_database_reads_no_file(analyst_lake: AnalystLake, tmp_path: Path) -> None:
    """DuckDB reads IMPORT DATABASE's files while parsing, before the policy sees a statement: the lock-down
    refuses that read; were it gone, the statements the files hold (CREATE, COPY) would be refused."""
    (tmp_path / "schema.sql").write_text("CREATE TABLE stolen (line VARCHAR);\n")
    (tmp_path / "load.sql").write_text("COPY stolen FROM '/etc/passwd';\n")
    settings_before = _settings(analyst_lake.reader)
    with pytest.raises((duckdb.PermissionException, QueryRefusedError)):
        run_query(analyst_lake.reader, f"IMPORT DATABASE '{tmp_path}'")
    assert _settings(analyst_lake.reader) == settings_before
    assert analyst_lake.reader.connection.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'stolen'"
    ).fetchone() == (0,)


def test_documented_reads_pass_the_policy(analyst_lake: AnalystLake) -> None:
    """What analysts legitimately write passes: the snapshots view, raw tables, CTEs, EXPLAIN ANALYZE, DESCRIBE."""
    for sql in (
        "SELECT snapshot_id, changes FROM snapshots ORDER BY snapshot_id DESC LIMIT 3",
        "SELECT count(*) FROM lake.main.settlement_epoch",
        "WITH recent AS (SELECT * FROM epochs WHERE epoch > 1) SELECT * FROM recent",
        "EXPLAIN ANALYZE SELECT sum(amount_micros) FROM payables",
        "DESCRIBE payables",
        "SELECT n, [x * 2 FOR x IN range(n)] AS doubled FROM range(3) t(n)",
    ):
        assert run_query(analyst_lake.reader, sql).num_rows > 0, sql


def test_cli_refuses_explain_analyze_copy_over_the_catalog(analyst_lake: AnalystLake) -> None:
    """Through the command line: exit 2, the refusal names the statement and the advice, and no file changed."""
    lake = analyst_lake
    target = lake.catalog_file() or lake.parquet_file()
    files = lake.digests()
    result = subprocess.run(
        royalty_command("sql", *lake.cli_options(), f"EXPLAIN ANALYZE COPY (SELECT 1) TO '{target}'"),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2, result.stdout
    message = " ".join(result.stderr.split())
    assert "refused the COPY statement inside EXPLAIN" in message
    assert "EXPLAIN [ANALYZE] SELECT" in message
    assert lake.digests() == files


analyst_uid = 65534  # nobody: no write access to a root-owned 0755/0644 ledger
# Root's home is 0700 and may hold the project's Python: in a private mount namespace the analyst sees it as
# a 0755 folder of the same entries (each keeping its own permissions), then runs as the unprivileged uid.
_as_analyst_script = """
set -e
home=$(mktemp -d)
mount --bind /root "$home"
mount -t tmpfs -o mode=0755 tmpfs /root
for entry in "$home"/* "$home"/.[!.]*; do
    [ -e "$entry" ] || continue
    target="/root/$(basename "$entry")"
    if [ -d "$entry" ]; then mkdir "$target"; else touch "$target"; fi
    mount --bind "$entry" "$target"
done
exec setpriv --reuid={uid} --regid={uid} --clear-groups -- "$@"
"""


def _analyst_command(*command: str) -> list[str]:
    script = _as_analyst_script.format(uid=analyst_uid)
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "analyst", *command]


@pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(tool) for tool in ("setpriv", "unshare")),
    reason="needs root, setpriv and unshare to run a command as another uid",
)
def test_an_analyst_uid_without_write_access_queries_the_ledger(sqlite_lake: Path) -> None:
    """The deployment of docs/operations.md: analysts run under a uid that can only read the catalog and data."""
    lake = sqlite_lake
    files = {path: path.read_bytes() for path in lake.rglob("*") if path.is_file()}
    catalog = lake / "catalog.sqlite"
    query = (
        "SELECT (SELECT count(*) FROM epochs) AS epochs, (SELECT count(*) FROM inference_events) > 0 AS events, "
        "(SELECT count(*) FROM reconciliation WHERE items_off <> 0) AS checks_off"
    )
    answer = subprocess.run(
        _analyst_command(*royalty_command("sql", "--lake", str(lake), "--format", "csv", query)),
        capture_output=True,
        text=True,
        env={**os.environ, "HOME": str(lake.parent)},
        cwd=lake.parent,  # root's and 0755: the analyst can write nowhere near the ledger
    )
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.split() == ["epochs,events,checks_off", "2,True,0"]
    # Even with DuckDB unrestricted, the uid cannot write: the file permissions are the boundary.
    write = subprocess.run(
        _analyst_command(sys.executable, "-c", f"import os; print(os.getuid()); open({str(catalog)!r}, 'r+b')"),
        capture_output=True,
        text=True,
    )
    assert write.stdout.split() == [str(analyst_uid)], write.stderr
    assert write.returncode != 0 and "Permission denied" in write.stderr
    assert {path: path.read_bytes() for path in lake.rglob("*") if path.is_file()} == files


def test_engine_limits_come_from_settings_within_bounds(sqlite_lake: Path) -> None:
    """`query_memory_mb_max` and `query_threads_max` set the printed lock-down; out of bounds they are refused."""
    environment = {**os.environ, "ROYALTY_QUERY_MEMORY_MB_MAX": "300", "ROYALTY_QUERY_THREADS_MAX": "3"}
    printed = subprocess.run(
        royalty_command("sql", "--lake", str(sqlite_lake), "--print-attach"),
        capture_output=True,
        text=True,
        env=environment,
    )
    assert printed.returncode == 0, printed.stderr
    lines = printed.stdout.splitlines()
    assert {"SET memory_limit = '300MB';", "SET threads = 3;", "SET enable_external_access = false;"} <= set(lines)
    assert lines[-1] == "SET lock_configuration = true;"
    refused = subprocess.run(
        royalty_command("sql", "--lake", str(sqlite_lake), "SELECT 1"),
        capture_output=True,
        text=True,
        env={**os.environ, "ROYALTY_QUERY_MEMORY_MB_MAX": "10"},
    )
    assert refused.returncode == 2
    assert "`query_memory_mb_max` is 10; it must be from 64 to 1,048,576" in " ".join(refused.stderr.split())
