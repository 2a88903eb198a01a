"""`royalty verify` names inlined bookkeeping rows changed in the catalog behind DuckLake's back, on both catalogs.

The offsets, batches and checksums live in the catalog database (`ducklake_inlined_data_*`), not in
checksummed files; each test changes them with the catalog's own client (sqlite3, psycopg), as an
operator or an attacker holding the catalog's credentials would, and runs the real `verify`.
"""

from __future__ import annotations

import functools
import sqlite3
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.sample import SampleTraffic
from ledger import Ledger
from ledger.inlined_digest import (
    _plain_json_pattern,
    arrow_digests,
    canonical_text,
    canonical_text_sql,
    digestible_in_python,
    relation_digests,
    row_digest,
    row_digest_chars,
    row_text_sql,
    typed_columns,
)
from ledger.ledger import _values_sql
from ledger.tables import duckdb_type, inlined_tables
from ledger.verify import verify
from tests.conftest import royalty_command
from tests.ledger.helpers import batch_of

if TYPE_CHECKING:
    from tests.support.postgres import PostgresServer

pytest_plugins = ("tests.support.postgres",)

OFFSET_SHIFT = 1_000_000
_printable = frozenset(map(chr, range(32, 127)))
METERED = 40


@dataclass(frozen=True)
class Catalog:
    """A two-append ledger and a way to run SQL on its catalog database directly."""

    location: str
    data_path: str | None
    execute: Callable[[str], list[tuple]]

    def inlined_table(self, table: str) -> str:
        (table_id,) = self.execute(f"SELECT table_id FROM ducklake_table WHERE table_name = '{table}'")[0]
        names = self.execute("SELECT table_name FROM ducklake_inlined_data_tables WHERE table_id = " + str(table_id))
        return names[-1][0]


def _fill(location: str, data_path: str | None) -> int:
    """Two appends: offsets 0..19, then 20..end; return the end (the second batch's next offset)."""
    values = list(SampleTraffic(seed=3).registry()) + list(SampleTraffic(seed=3).metered(METERED))
    with Ledger.open(location, data_path) as ledger:
        ledger.append(*batch_of(values[:20], topic="t", first_offset=0))
        ledger.append(*batch_of(values[20:], topic="t", first_offset=20))
    return len(values)


@pytest.fixture(params=["sqlite", "postgres"])
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Catalog]:
    if request.param == "sqlite":
        location = str(tmp_path / "lake")
        _fill(location, None)

        def run_sqlite(sql: str) -> list[tuple]:
            with sqlite3.connect(tmp_path / "lake" / "catalog.sqlite") as database:
                return database.execute(sql).fetchall()

        yield Catalog(location, None, run_sqlite)
        return
    import psycopg

    server: PostgresServer = request.getfixturevalue("postgres_server")
    location = server.create_database(f"digest_{uuid.uuid4().hex[:10]}")
    _fill(location, str(tmp_path / "data"))

    def run_postgres(sql: str) -> list[tuple]:
        with psycopg.connect(location.removeprefix("postgres:"), autocommit=True) as database:
            cursor = database.execute(sql)
            return cursor.fetchall() if cursor.description else []

    yield Catalog(location, str(tmp_path / "data"), run_postgres)


def _problems(catalog: Catalog) -> list[str]:
    with Ledger.open_read_only(catalog.location, catalog.data_path) as ledger:
        return verify(ledger).problems


def test_stored_offsets_moved_by_a_million_in_the_catalog_are_named(catalog: Catalog) -> None:
    """The issue's attack: an UPDATE on the inlined offsets table (ingest would skip a million messages)."""
    assert _problems(catalog) == []
    table = catalog.inlined_table("ingest_offset")
    catalog.execute(f"UPDATE {table} SET next_offset = next_offset + {OFFSET_SHIFT} WHERE first_offset = 20")
    problems = _problems(catalog)
    assert len(problems) == 1, problems
    assert "inlined table `ingest_offset` was changed in the catalog behind DuckLake's back" in problems[0]
    end = len(list(SampleTraffic(seed=3).registry())) + METERED
    assert f'"next_offset":{OFFSET_SHIFT + end}' in problems[0]
    assert '"first_offset":20' in problems[0] and '"first_offset":0,' not in problems[0]


def test_a_changed_checksum_a_deleted_batch_and_a_moved_snapshot_are_named(catalog: Catalog) -> None:
    """Other direct edits: a file checksum rewritten, a batch row deleted, an offsets row moved to another snapshot,
    and one forged into the ledger's first snapshot (on a ledger created digesting, no row predates the digests)."""
    catalog.execute(f"UPDATE {catalog.inlined_table('file_checksum')} SET sha256 = 'f00d' WHERE row_id = 0")
    catalog.execute(f"DELETE FROM {catalog.inlined_table('ingest_batch')} WHERE row_id = 0")
    offsets = catalog.inlined_table("ingest_offset")
    catalog.execute(f"UPDATE {offsets} SET begin_snapshot = begin_snapshot + 1 WHERE first_offset = 0")
    catalog.execute(  # a forged row claiming the ledger's first snapshot, before any digest
        f"INSERT INTO {offsets} SELECT row_id + 1000, 1, end_snapshot, kafka_topic, kafka_partition, 777, 778, "
        f"ingest_batch_id FROM {offsets} WHERE first_offset = 20"
    )
    problems = " ".join(_problems(catalog))
    assert '"sha256":"f00d"' in problems
    assert "inlined table `ingest_batch` was changed" in problems and "row(s) snapshot" in problems
    assert "inlined table `ingest_offset` was changed" in problems and '"first_offset":0,' in problems
    assert '"first_offset":777' in problems and "carries snapshot 1, which recorded no digest" in problems


def test_verify_command_exits_1_naming_the_changed_row(tmp_path: Path) -> None:
    """Through the CLI on an embedded ledger: exit 1, the table and the changed value on standard error."""
    lake = tmp_path / "lake"
    _fill(str(lake), None)
    database = sqlite3.connect(lake / "catalog.sqlite")
    (table_id,) = database.execute("SELECT table_id FROM ducklake_table WHERE table_name = 'ingest_offset'").fetchone()
    (table,) = database.execute(
        "SELECT table_name FROM ducklake_inlined_data_tables WHERE table_id = ?", [table_id]
    ).fetchone()
    with database:
        database.execute(f"UPDATE {table} SET next_offset = next_offset + {OFFSET_SHIFT}")
    database.close()
    result = subprocess.run(royalty_command("verify", "--lake", str(lake)), capture_output=True, text=True)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "ingest_offset" in result.stderr and str(OFFSET_SHIFT + 20) in result.stderr.replace("\n", "")


def _column_values(data_type: pa.DataType, printable: bool = False) -> st.SearchStrategy:
    if pa.types.is_string(data_type) and printable:  # mostly text DuckDB digests without Python (no escape in it)
        return st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=12) | st.text(max_size=3)
    if pa.types.is_string(data_type):
        return st.text(max_size=12)  # any code point: quotes, backslashes, control characters, NUL, emoji
    if pa.types.is_timestamp(data_type):
        return st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC))
    if pa.types.is_boolean(data_type):
        return st.booleans()
    bits = data_type.bit_width - 1
    return st.integers(min_value=-(2**bits), max_value=2**bits - 1)


@st.composite
def _inlined_rows(draw: st.DrawFn, printable: bool = False) -> pa.Table:
    """Rows of one of the ledger's inlined tables whose digests Python computes (each with NULLs where allowed)."""
    names = sorted(name for name, schema in inlined_tables.items() if digestible_in_python(schema))
    schema = inlined_tables[draw(st.sampled_from(names))]
    count = draw(st.integers(min_value=0, max_value=4))
    columns = {}
    for item in schema:
        values = _column_values(item.type, printable) | (st.none() if item.nullable else st.nothing())
        columns[item.name] = draw(st.lists(values, min_size=count, max_size=count))
    return pa.table(columns, schema=schema)


@settings(max_examples=60, deadline=None)
@given(_inlined_rows())
def test_python_row_digests_equal_duckdbs_for_every_inlined_table(rows: pa.Table) -> None:
    """A small append digests its bookkeeping rows in Python (`arrow_digests`); `verify` recomputes them with DuckDB's
    `to_json`: both must give each row the same digest, or every append would read as tampered."""
    connection = duckdb.connect()
    connection.register("rows", rows)
    assert arrow_digests(rows) == relation_digests(connection, "rows", rows.schema)


@functools.cache
def _scratch() -> duckdb.DuckDBPyConnection:
    return duckdb.connect()


@settings(max_examples=40, deadline=None)
@given(_inlined_rows(printable=True))
def test_duckdbs_row_digests_equal_pythons_for_every_row_it_calls_plain(rows: pa.Table) -> None:
    """`verify` digests the stored bookkeeping rows in DuckDB (`canonical_text_sql`, compared by snapshot there) and
    only the rows of a snapshot that differs in Python. For a row DuckDB calls plain, its text and digest must be
    Python's (`canonical_text`, `row_digest`): otherwise a changed row could match in DuckDB what Python would name.
    A row it does not call plain (an escape in its JSON text) is left to Python."""
    connection = _scratch()
    columns = ", ".join(f"{item.name} {duckdb_type(item.type)}" for item in rows.schema)
    connection.execute(f"CREATE OR REPLACE TABLE stored ({columns})")
    connection.register("rows", rows)
    connection.execute("INSERT INTO stored SELECT * FROM rows")
    connection.unregister("rows")
    typed = typed_columns(connection, "memory", "stored")
    text_sql = canonical_text_sql(typed)
    assert text_sql is not None  # every inlined table of the stream is digested in DuckDB
    found = connection.execute(
        f"""SELECT {row_text_sql([(name, is_timestamp) for name, is_timestamp, _ in typed])}, text,
                   regexp_full_match(text, ?), left(sha256(text), {row_digest_chars})
            FROM (SELECT *, {text_sql} AS text FROM stored)""",
        [_plain_json_pattern],
    ).fetchall()
    for python_text, duckdb_text, plain, digest in found:
        if plain:
            assert (duckdb_text, digest) == (canonical_text(python_text), row_digest(python_text))
        else:
            assert any(character not in _printable for character in duckdb_text) or "\\" in duckdb_text


def test_a_compaction_records_event_date_is_digested_in_duckdb_as_python_does() -> None:
    """The compaction record's DATE column (BC and infinite dates too): DuckDB's text is Python's."""
    connection = _scratch()
    connection.execute("CREATE OR REPLACE TABLE dated (event_date DATE, note VARCHAR)")
    connection.execute(
        "INSERT INTO dated VALUES ('2026-11-23', 'a'), ('0044-03-15 (BC)', NULL), ('infinity', 'b'), (NULL, NULL)"
    )
    text_sql = canonical_text_sql(typed_columns(connection, "memory", "dated"))
    assert text_sql is not None
    for python_text, duckdb_text in connection.execute(
        f"SELECT {row_text_sql([('event_date', False), ('note', False)])}, {text_sql} FROM dated"
    ).fetchall():
        assert duckdb_text == canonical_text(python_text)


def test_a_type_python_does_not_digest_is_left_to_duckdb() -> None:
    assert arrow_digests(pa.table({"day": pa.array([date(2026, 12, 6)], pa.date32())})) is None
    assert arrow_digests(pa.table({"amount": pa.array([1.5], pa.float64())})) is None


@settings(max_examples=60, deadline=None)
@given(_inlined_rows())
def test_rows_inserted_as_sql_literals_are_stored_as_given(rows: pa.Table) -> None:
    """A small append inserts its bookkeeping rows as SQL literals (`_values_sql`, cheaper than registering them):
    quotes, backslashes, emoji, NULLs and microseconds must be stored exactly, so the digest `verify` recomputes from
    the stored row is the one the append recorded. Text with a NUL is left to the registered-relation path."""
    values = _values_sql(rows)
    if values is None:
        texts = [text for column in rows.columns if pa.types.is_string(column.type) for text in column.to_pylist()]
        assert any(text is not None and "\x00" in text for text in texts)
        return
    connection = duckdb.connect()
    connection.execute("SET TimeZone = 'Asia/Kathmandu'")  # a literal's instant must not depend on the session's zone
    columns = ", ".join(f"{item.name} {duckdb_type(item.type)}" for item in rows.schema)
    connection.execute(f"CREATE TABLE stored ({columns})")
    if rows.num_rows:
        connection.execute(f"INSERT INTO stored ({', '.join(rows.schema.names)}) VALUES {values}")
    assert sorted(relation_digests(connection, "stored", rows.schema)) == sorted(arrow_digests(rows) or [])
    assert connection.execute("SELECT count(*) FROM stored").fetchone() == (rows.num_rows,)


def test_an_append_with_quotes_and_a_nul_in_its_bookkeeping_verifies_clean(tmp_path: Path) -> None:
    """The writer's name (a quote, a backslash) goes in as a literal, a file position's source name with a NUL through
    a registered relation; both are stored as given and `verify` finds every digest."""
    values = list(SampleTraffic(seed=4).registry()) + list(SampleTraffic(seed=4).metered(10))
    writer = "o'brien \\ 'ingest' ✓"
    with Ledger.open(tmp_path / "lake") as ledger:
        ledger.append(*batch_of(values, topic="t", first_offset=0), writer=writer)
        ledger.append_records(
            {
                "file_source_position": pa.table(
                    {
                        "kafka_topic": ["file:a"],
                        "next_offset": [3],
                        "prefix_size_bytes": [10],
                        "prefix_sha256": ["0" * 64],
                        "source_name": ["a\x00b"],
                        "ingest_batch_id": ["adopted"],
                    }
                )
            }
        )
    with Ledger.open_read_only(tmp_path / "lake") as ledger:
        assert verify(ledger).problems == []
        assert ledger.connection.execute("SELECT writer FROM lake.main.ingest_batch").fetchall() == [(writer,)]
        names = ledger.connection.execute("SELECT source_name FROM lake.main.file_source_position").fetchall()
        assert names == [("a\x00b",)]
