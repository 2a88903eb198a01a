"""Digests of the rows a transaction inlines into the catalog, so `royalty verify` sees them changed.

The bookkeeping tables (offsets, batches, checksums, file positions, and the settlement's small
tables) are inlined: their rows live in the catalog database (`ducklake_inlined_data_*`), not in
checksummed Parquet files. Anyone who can write the catalog could change them behind DuckLake's
back (an UPDATE moving stored offsets by a million makes ingest skip a million messages) without
leaving a snapshot. So every transaction that inlines rows also records, in `inlined_digest`, one
row per table it inserted into: how many rows, and a short digest of each row's canonical text.
`royalty verify` reads every inlined row with the snapshot that inserted it (DuckLake's
`snapshot_id` column), recomputes the digests and names each row whose digest was never recorded,
each recorded row that is gone, and each snapshot that inlined rows without a digest.

This detects a change made with a catalog client (psql, sqlite3, `postgres_execute`). It does not
stop a writer-credentialed attacker who recomputes the digests too (the algorithm is public):
against that, the boundary is that only the writers hold write credentials (`royalty catalog
grant-reader`, file permissions), and settled epochs are anchored on-chain.
"""

import hashlib
import json
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import duckdb
import pyarrow as pa

digest_table = "inlined_digest"
inlined_digest_schema = pa.schema(
    [
        pa.field("table_name", pa.string(), nullable=False),
        pa.field("row_count", pa.int64(), nullable=False),
        # The sorted digests of the rows, space-separated (see `row_digest_chars`).
        pa.field("row_digests", pa.string(), nullable=False),
    ]
)
# Leading hex characters of each row's SHA-256 kept: 64 bits, so matching a changed row to a recorded
# digest by chance or by search takes ~2^64 tries, at 17 bytes a row in the catalog.
row_digest_chars = 16
# Tables whose inserts are not digested: the digest table itself, and the format record (written by
# `ledger.format` before the digest table exists; its history is checked by verify's format rules).
undigested_tables = frozenset({digest_table, "ledger_format"})
# The ledger format that introduced the digests (`ledger/format.py`).
digests_format_version = 3


def row_text_sql(columns: list[tuple[str, bool]]) -> str:
    """A DuckDB expression giving each row's canonical text: JSON of its (name, is timestamp) columns.

    Timestamps are numbers (epoch µs), not text, so the text does not depend on the session's time zone.
    """
    members = []
    for name, is_timestamp in columns:
        column = f'"{name}"'
        members.append(f'"{name}" := {f"epoch_us({column})" if is_timestamp else column}')
    return f"to_json(struct_pack({', '.join(members)}))::VARCHAR"


def schema_columns(schema: pa.Schema) -> list[tuple[str, bool]]:
    return [(item.name, pa.types.is_timestamp(item.type)) for item in schema]


def table_columns(connection: duckdb.DuckDBPyConnection, catalog: str, table: str) -> list[tuple[str, bool]]:
    """A ledger table's columns as the catalog declares them, in order."""
    return [(name, is_timestamp) for name, is_timestamp, _ in typed_columns(connection, catalog, table)]


def typed_columns(connection: duckdb.DuckDBPyConnection, catalog: str, table: str) -> list[tuple[str, bool, str]]:
    """A ledger table's columns as the catalog declares them, in order: (name, is timestamp, DuckDB type)."""
    return [
        (name, data_type.startswith("TIMESTAMP"), data_type)
        for name, data_type in connection.execute(
            "SELECT column_name, data_type FROM duckdb_columns() WHERE database_name = ? AND schema_name = 'main' "
            "AND table_name = ? ORDER BY column_index",
            [catalog, table],
        ).fetchall()
    ]


def canonical_text(text: str) -> str:
    """A row's JSON text without its NULL columns: a column a migration added later leaves old rows' digests alone."""
    values = {name: value for name, value in json.loads(text).items() if value is not None}
    return json.dumps(values, sort_keys=True, separators=(",", ":"))


def row_digest(text: str) -> str:
    return hashlib.sha256(canonical_text(text).encode()).hexdigest()[:row_digest_chars]


def relation_digests(connection: duckdb.DuckDBPyConnection, relation: str, schema: pa.Schema) -> list[str]:
    """The row digests of the registered relation `relation` (rows about to be inserted)."""
    rows = connection.execute(f"SELECT {row_text_sql(schema_columns(schema))} FROM {relation}").fetchall()
    return [row_digest(text) for (text,) in rows]


def digestible_in_python(schema: pa.Schema) -> bool:
    """Whether `arrow_digests` digests rows of `schema`: every column of a type whose JSON text Python writes
    exactly as DuckDB's `to_json` does, once both are parsed back (`canonical_text`)."""
    return all(_digestible_in_python(item.type) for item in schema)


def _digestible_in_python(data_type: pa.DataType) -> bool:
    if pa.types.is_timestamp(data_type):
        return data_type.unit == "us"
    return pa.types.is_string(data_type) or pa.types.is_integer(data_type) or pa.types.is_boolean(data_type)


def arrow_digests(rows: pa.Table) -> list[str] | None:
    """The row digests of `rows` computed in Python, equal to `relation_digests` of the same rows; None when a
    column's type is not one `_digestible_in_python` (the caller then asks DuckDB).

    A small append inlines a handful of bookkeeping rows: digesting them here saves a DuckDB query per table
    (benchmarks/RESULTS.md, small appends). tests/ledger/test_inlined_digest.py checks both agree.
    """
    if not digestible_in_python(rows.schema):
        return None
    columns = {}
    for item in rows.schema:
        column = rows.column(item.name)
        # DuckDB's text is `epoch_us(...)`: the microseconds since the epoch, an integer.
        columns[item.name] = (column.cast(pa.int64()) if pa.types.is_timestamp(item.type) else column).to_pylist()
    digests = []
    for index in range(rows.num_rows):
        values = {name: column[index] for name, column in columns.items() if column[index] is not None}
        text = json.dumps(values, sort_keys=True, separators=(",", ":"))
        digests.append(hashlib.sha256(text.encode()).hexdigest()[:row_digest_chars])
    return digests


def digest_rows(pending: dict[str, list[str]]) -> pa.Table:
    """The `inlined_digest` rows of one transaction: one per table it inlined rows into."""
    tables = sorted(name for name, digests in pending.items() if digests)
    return pa.table(
        {
            "table_name": tables,
            "row_count": [len(pending[name]) for name in tables],
            "row_digests": [" ".join(sorted(pending[name])) for name in tables],
        },
        schema=inlined_digest_schema,
    )


# A tampered catalog could hold millions of changed rows: verify names this many per table, then counts.
rows_named_per_table_max = 20


@dataclass(frozen=True)
class MovedFile:
    """A bookkeeping file whose rows a flush checked when it wrote them (ledger/catalog_flush.py, format 20), as verify
    found it: listed for its table, with the size and SHA-256 recorded. Its rows are not digested again; the digests
    recorded for its table and snapshot range must still hash to `digests_sha256`."""

    table: str
    filename: str  # as DuckLake's `filename` column names it: the absolute path
    snapshot_id_min: int
    snapshot_id_max: int
    digests_sha256: str


@dataclass(frozen=True)
class MovedRows:
    """What a flush checked of the rows it moved into one file: every row matched a digest its snapshot recorded and
    every digest recorded for the table in the snapshot range matched a row (`check_moved_rows`)."""

    row_count: int
    snapshot_id_min: int
    snapshot_id_max: int
    digests_sha256: str


def check_inlined_rows(
    connection: duckdb.DuckDBPyConnection, catalog: str, inlined: Iterable[str], moved: Iterable[MovedFile] = ()
) -> tuple[list[str], list[str]]:
    """Problems and warnings of the inlined tables (`inlined`, and any table with recorded digests).

    Every row of a digested table, with the snapshot that inserted it, must match a digest recorded by
    that snapshot; every recorded digest must match a row. Rows inserted before the digest table
    existed (a ledger migrated from format 2 or earlier) are counted in a warning, not checked.

    The rows are digested and compared in DuckDB, a table at a time (`_snapshots_to_recheck`): a snapshot whose
    rows all match what it recorded is done there; the rows of any other snapshot (a difference, or a row whose
    text DuckDB may not write as Python does) are digested again in Python, which names them. So the check costs
    a column scan per table, not a Python step per row (benchmarks/RESULTS.md, "verify at many appends").

    The rows of the `moved` files (checked when a flush wrote them, their bytes since by their SHA-256) are not
    digested again: the digests recorded for each one's table and snapshot range are hashed and compared with what
    the flush recorded instead. A file whose digests do not hash so is digested row by row like any other, which
    names the difference; so is every row of its range found outside it (benchmarks/RESULTS.md, "verify flat in
    appends").
    """
    present = _present_tables(connection, catalog)
    if digest_table not in present:
        return [], []
    start = _unchecked_before(connection, catalog, present)
    # The digest rows, read from the catalog (and the files they were moved to) once for every table's check.
    recorded = f"ledger_verify_digests_{uuid.uuid4().hex}"
    connection.execute(
        f"CREATE TEMP TABLE {recorded} AS "
        f"SELECT snapshot_id, table_name, row_count, row_digests FROM {catalog}.main.{digest_table}"
    )
    try:
        trusted = _moved_files_as_recorded(connection, recorded, list(moved))
        return _check_tables(connection, catalog, sorted(set(inlined) & present), present, start, recorded, trusted)
    finally:
        connection.execute(f"DROP TABLE IF EXISTS temp.{recorded}")


@dataclass(frozen=True)
class MovedRowsContext:
    """What `check_moved_rows` needs of the catalog's schema, read before the flush's transaction (DuckDB's schema
    functions read the SQLite catalog's own schema, which the flush's write lock blocks until its commit)."""

    digesting: bool  # the ledger records row digests (format 3 or later)
    start: int | None  # `_unchecked_before`
    columns: dict[str, list[tuple[str, bool, str]]]


def moved_rows_context(connection: duckdb.DuckDBPyConnection, catalog: str) -> MovedRowsContext:
    present = _present_tables(connection, catalog)
    if digest_table not in present:
        return MovedRowsContext(False, None, {})
    return MovedRowsContext(
        True, _unchecked_before(connection, catalog, present), _columns_by_table(connection, catalog)
    )


def check_moved_rows(
    connection: duckdb.DuckDBPyConnection, catalog: str, table: str, filename: str, context: MovedRowsContext
) -> tuple[MovedRows | None, list[str]]:
    """Check the rows of `table` in the file `filename` (one a flush just wrote) against the digests their snapshots
    recorded, as verify would: every row matches one, and every digest recorded for `table` in the file's snapshot
    range matches a row. Returns what to record (None: nothing to record, the file's rows are digested at every
    verify: none, or some older than the ledger's digests) and the problems found (named as verify names them)."""
    if not context.digesting or table in undigested_tables:
        return None, []
    relation = f"(SELECT snapshot_id, * FROM {catalog}.main.{table} WHERE filename = {_quoted(filename)})"
    ((count, low, high),) = connection.execute(
        f"SELECT count(*), min(snapshot_id), max(snapshot_id) FROM {relation}"
    ).fetchall()
    if not count or (context.start is not None and low < context.start):
        return None, []
    recorded = f"ledger_flush_digests_{uuid.uuid4().hex}"
    connection.execute(
        f"CREATE TEMP TABLE {recorded} AS SELECT snapshot_id, table_name, row_count, row_digests "
        f"FROM {catalog}.main.{digest_table} WHERE table_name = ? AND snapshot_id BETWEEN ? AND ?",
        [table, low, high],
    )
    try:
        columns = context.columns[table]
        problems = _malformed_digest_rows(connection, recorded)
        recheck = _snapshots_to_recheck(connection, relation, columns, None, recorded, table)
        if recheck:
            problems += _named_differences(connection, relation, columns, None, sorted(recheck), recorded, table)
        ((digests_sha256,),) = connection.execute(f"SELECT {_digests_sha256_sql} FROM {recorded}").fetchall()
    finally:
        connection.execute(f"DROP TABLE IF EXISTS temp.{recorded}")
    return MovedRows(int(count), int(low), int(high), str(digests_sha256)), problems


# The SHA-256 of a set of digest rows (one table's, in a snapshot range): each row's snapshot, row count and digests on
# a line, the lines sorted. A digest row changed, added or removed changes it.
_digests_sha256_sql = (
    "sha256(coalesce(string_agg(snapshot_id::VARCHAR || ' ' || row_count::VARCHAR || ' ' || row_digests, chr(10) "
    "ORDER BY snapshot_id, row_count, row_digests), ''))"
)


def _present_tables(connection: duckdb.DuckDBPyConnection, catalog: str) -> set[str]:
    return {
        name
        for (name,) in connection.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = ?", [catalog]
        ).fetchall()
    }


def _unchecked_before(connection: duckdb.DuckDBPyConnection, catalog: str, present: set[str]) -> int | None:
    """The snapshot before which rows have no digest to check (a ledger migrated from before format 3: the digest
    table's creation), or None when every row is checked."""
    (start,) = connection.execute(
        f"SELECT min(begin_snapshot) FROM __ducklake_metadata_{catalog}.ducklake_table WHERE table_name = ?",
        [digest_table],
    ).fetchone()
    # A ledger created at format 3 or later has no legitimate row older than its digest table.
    created_digesting = (
        "ledger_format" in present
        and connection.execute(
            f"SELECT min(format_version) >= {digests_format_version} FROM {catalog}.main.ledger_format"
        ).fetchone()[0]
    )
    return None if created_digesting else start  # None: a row claiming an older snapshot has no digest and is named


def _moved_files_as_recorded(
    connection: duckdb.DuckDBPyConnection, recorded: str, moved: list[MovedFile]
) -> dict[str, list[MovedFile]]:
    """The `moved` files whose table's digests in their snapshot range hash as their flush recorded, by table."""
    if not moved:
        return {}
    files = f"ledger_verify_moved_{uuid.uuid4().hex}"
    connection.execute(
        f"CREATE TEMP TABLE {files} (table_name VARCHAR, filename VARCHAR, low BIGINT, high BIGINT, expected VARCHAR)"
    )
    try:
        connection.executemany(
            f"INSERT INTO {files} VALUES (?, ?, ?, ?, ?)",
            [[m.table, m.filename, m.snapshot_id_min, m.snapshot_id_max, m.digests_sha256] for m in moved],
        )
        matching = {
            filename
            for (filename,) in connection.execute(
                f"""SELECT f.filename FROM {files} f LEFT JOIN {recorded} d
                    ON d.table_name = f.table_name AND d.snapshot_id BETWEEN f.low AND f.high
                    GROUP BY f.filename, f.expected HAVING {_digests_sha256_sql} = f.expected"""
            ).fetchall()
        }
    finally:
        connection.execute(f"DROP TABLE IF EXISTS temp.{files}")
    trusted: dict[str, list[MovedFile]] = {}
    for item in moved:
        if item.filename in matching:
            trusted.setdefault(item.table, []).append(item)
    return trusted


def _check_tables(
    connection: duckdb.DuckDBPyConnection,
    catalog: str,
    inlined: list[str],
    present: set[str],
    start: int | None,
    recorded: str,
    trusted: dict[str, list[MovedFile]],
) -> tuple[list[str], list[str]]:
    problems = _malformed_digest_rows(connection, recorded)
    digested = {table for (table,) in connection.execute(f"SELECT DISTINCT table_name FROM {recorded}").fetchall()}
    columns = _columns_by_table(connection, catalog)
    unchecked = 0
    for table in sorted((set(inlined) | digested) & present - undigested_tables):
        if start is not None:
            ((older,),) = connection.execute(
                f"SELECT count(*) FROM {catalog}.main.{table} WHERE snapshot_id < ?", [start]
            ).fetchall()
            unchecked += older
        # The rows outside the files checked when they were moved, against the digests outside their ranges.
        relation, digests = f"{catalog}.main.{table}", recorded
        if trusted.get(table):
            files = ", ".join(_quoted(item.filename) for item in trusted[table])
            ranges = " OR ".join(
                f"snapshot_id BETWEEN {int(item.snapshot_id_min)} AND {int(item.snapshot_id_max)}"
                for item in trusted[table]
            )
            relation = f"(SELECT snapshot_id, * FROM {catalog}.main.{table} WHERE filename NOT IN ({files}))"
            digests = f"(SELECT * FROM {recorded} WHERE NOT ({ranges}))"
        recheck = _snapshots_to_recheck(connection, relation, columns[table], start, digests, table)
        if recheck:
            # Named from every row and digest of those snapshots, in the moved files or not.
            problems += _named_differences(
                connection, f"{catalog}.main.{table}", columns[table], start, sorted(recheck), recorded, table
            )
    warnings = []
    if unchecked:
        warnings.append(
            f"{unchecked} inlined bookkeeping row(s) were written before this ledger recorded their digests "
            "(ledger format 3): they are trusted as they are, not checked against a digest"
        )
    return problems, warnings


def _named_differences(
    connection: duckdb.DuckDBPyConnection,
    relation: str,
    columns: list[tuple[str, bool, str]],
    start: int | None,
    recheck: list[int],
    recorded: str,
    table: str,
) -> list[str]:
    """The rows of `recheck`'s snapshots digested again in Python, compared with what they recorded, named."""
    # Few snapshots: only theirs are read again; many (a catalog rewritten wholesale): the whole table.
    only = recheck if len(recheck) <= snapshots_rechecked_by_id_max else None
    text_sql = row_text_sql([(name, is_timestamp) for name, is_timestamp, _ in columns])
    found: dict[int, dict[str, list[str]]] = {}
    for snapshot_id, text in connection.execute(
        f"SELECT snapshot_id, {text_sql} FROM {relation}{_snapshot_filter(start, only)}"
    ).fetchall():
        found.setdefault(snapshot_id, {}).setdefault(row_digest(text), []).append(canonical_text(text))
    return _table_problems(table, found, _recorded(connection, recorded, table, only))


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# More snapshots than this to digest again in Python (a catalog changed wholesale): the table is read whole instead
# of by a list of snapshot ids.
snapshots_rechecked_by_id_max = 10_000
# DuckDB's JSON text of a value is Python's (`json.dumps`, ASCII only) when it is printable ASCII without a backslash:
# no escape to differ in. A row whose text has any other character is digested in Python.
_plain_json_pattern = r"[ -\[\]-~]*"
# Column types whose JSON text DuckDB and Python write alike: `canonical_text` parses DuckDB's text and writes it
# again, which leaves integers, booleans and plain strings (a DATE is one) as they were; timestamps are epoch µs
# integers. Not floats (Python writes 1e5 back as 100000.0) nor nested types (Python sorts their keys).
_plain_types = frozenset(
    {"VARCHAR", "BOOLEAN", "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
     "UINTEGER", "UBIGINT", "DATE", "TIMESTAMP", "TIMESTAMP WITH TIME ZONE"}
)  # fmt: skip
# A digest row as `digest_rows` writes it: digests of `row_digest_chars` lowercase hex characters, one space apart.
_digests_pattern = f"([0-9a-f]{{{row_digest_chars}}}( [0-9a-f]{{{row_digest_chars}}})*)?"
_digest_list_sql = "CASE WHEN row_digests = '' THEN [] ELSE string_split(row_digests, ' ') END"


def canonical_text_sql(columns: list[tuple[str, bool, str]]) -> str | None:
    """A DuckDB expression giving `canonical_text` of each row from its (name, is timestamp, type) columns, for rows
    whose text is plain (`_plain_json_pattern`); None when a column's name or type is not one it writes as Python."""
    if not all(re.fullmatch(r"[A-Za-z0-9_]+", name) and data_type in _plain_types for name, _, data_type in columns):
        return None
    members = []
    for name, is_timestamp, _ in sorted(columns):  # json.dumps(sort_keys=True): by code point, as `sorted`
        value = f'epoch_us("{name}")' if is_timestamp else f'"{name}"'
        members.append(f"""CASE WHEN "{name}" IS NOT NULL THEN '"{name}":' || to_json({value})::VARCHAR END""")
    return f"'{{' || concat_ws(',', {', '.join(members)}) || '}}'"


def _columns_by_table(connection: duckdb.DuckDBPyConnection, catalog: str) -> dict[str, list[tuple[str, bool, str]]]:
    """Every table's columns as the catalog declares them, in order: (name, is timestamp, DuckDB type)."""
    columns: dict[str, list[tuple[str, bool, str]]] = {}
    for table, name, data_type in connection.execute(
        "SELECT table_name, column_name, data_type FROM duckdb_columns() WHERE database_name = ? "
        "AND schema_name = 'main' ORDER BY table_name, column_index",
        [catalog],
    ).fetchall():
        columns.setdefault(table, []).append((name, data_type.startswith("TIMESTAMP"), data_type))
    return columns


def _snapshots_to_recheck(
    connection: duckdb.DuckDBPyConnection,
    relation: str,
    columns: list[tuple[str, bool, str]],
    start: int | None,
    recorded: str,
    table: str,
) -> set[int]:
    """The snapshots of `table` (read from `relation`) whose rows DuckDB does not find to match, as a multiset, the
    digests recorded for them in `recorded`: a row or a digest differs, one is missing, a digest row is not as
    written, or a row's text may not be Python's. All of them when `canonical_text_sql` does not write a column."""
    text_sql = canonical_text_sql(columns)
    if text_sql is None:
        rows = connection.execute(
            f"""SELECT snapshot_id FROM {relation}{_snapshot_filter(start, None)}
                UNION SELECT snapshot_id FROM {recorded} WHERE table_name = ?""",
            [table],
        ).fetchall()
        return {snapshot for (snapshot,) in rows}
    rows = connection.execute(
        f"""
        WITH texts AS (
            SELECT snapshot_id, {text_sql} AS text FROM {relation}{_snapshot_filter(start, None)}
        ), found AS (
            SELECT snapshot_id, bool_and(regexp_full_match(text, ?)) AS plain,
                   list_sort(list(left(sha256(text), {row_digest_chars}))) AS digests
            FROM texts GROUP BY snapshot_id
        ), wrote AS (
            SELECT snapshot_id, bool_and(regexp_full_match(row_digests, ?)) AS plain,
                   list_sort(flatten(list({_digest_list_sql}))) AS digests
            FROM {recorded} WHERE table_name = ? GROUP BY snapshot_id
        )
        SELECT snapshot_id FROM found FULL OUTER JOIN wrote USING (snapshot_id)
        WHERE found.plain IS NOT TRUE OR wrote.plain IS NOT TRUE OR found.digests IS DISTINCT FROM wrote.digests
        """,
        [_plain_json_pattern, _digests_pattern, table],
    ).fetchall()
    return {snapshot for (snapshot,) in rows}


def _snapshot_filter(start: int | None, only: list[int] | None) -> str:
    """A WHERE clause keeping the rows checked (from `start`, when rows before it are not) of the snapshots `only`."""
    conditions = [] if start is None else [f"snapshot_id >= {int(start)}"]
    if only is not None:
        conditions.append(f"snapshot_id IN ({', '.join(str(int(s)) for s in only) or 'NULL'})")
    return f" WHERE {' AND '.join(conditions)}" if conditions else ""


def _malformed_digest_rows(connection: duckdb.DuckDBPyConnection, recorded: str) -> list[str]:
    """A problem for each digest row whose digests do not number its row count."""
    problems = []
    for snapshot_id, table, row_count, digests in connection.execute(
        f"""SELECT snapshot_id, table_name, row_count, row_digests FROM {recorded}
            WHERE NOT regexp_full_match(row_digests, ?) OR len({_digest_list_sql}) != row_count
            ORDER BY snapshot_id, table_name""",
        [_digests_pattern],
    ).fetchall():
        items = digests.split()
        if len(items) != row_count:
            problems.append(
                f"the digest row of table `{table}` at snapshot {snapshot_id} lists {len(items)} digests for "
                f"{row_count} rows: it was changed in the catalog behind DuckLake's back"
            )
    return problems


def _recorded(
    connection: duckdb.DuckDBPyConnection, recorded: str, table: str, only: list[int] | None
) -> dict[int, dict[str, int]]:
    """The digests `table`'s snapshots (those `only`) recorded, by snapshot, as a multiset {digest: count}."""
    result: dict[int, dict[str, int]] = {}
    for snapshot_id, digests in connection.execute(
        f"SELECT snapshot_id, row_digests FROM (SELECT * FROM {recorded} WHERE table_name = ?)"
        f"{_snapshot_filter(None, only)}",
        [table],
    ).fetchall():
        counts = result.setdefault(snapshot_id, {})
        for item in digests.split():
            counts[item] = counts.get(item, 0) + 1
    return result


def _table_problems(
    table: str, found: dict[int, dict[str, list[str]]], recorded: dict[int, dict[str, int]]
) -> list[str]:
    """One problem naming every row (up to a bound) that differs from what its snapshot recorded."""
    named: list[str] = []
    for snapshot_id in sorted(set(found) | set(recorded)):
        expected = dict(recorded.get(snapshot_id, {}))
        unmatched: list[str] = []
        for digest, texts in sorted(found.get(snapshot_id, {}).items()):
            matched = min(len(texts), expected.get(digest, 0))
            expected[digest] = expected.get(digest, 0) - matched
            unmatched += texts[matched:]
        if unmatched and snapshot_id not in recorded:
            named += [
                f"row {text} carries snapshot {snapshot_id}, which recorded no digest for it" for text in unmatched
            ]
        else:
            named += [
                f"row {text} (snapshot {snapshot_id}) matches no digest that snapshot recorded" for text in unmatched
            ]
        gone = sum(count for count in expected.values() if count > 0) - len(unmatched)
        if gone > 0:
            named.append(f"{gone} row(s) snapshot {snapshot_id} inserted are gone")
    if not named:
        return []
    more = len(named) - rows_named_per_table_max
    return [
        f"inlined table `{table}` was changed in the catalog behind DuckLake's back: "
        + "; ".join(named[:rows_named_per_table_max])
        + (f"; and {more} more" if more > 0 else "")
    ]
