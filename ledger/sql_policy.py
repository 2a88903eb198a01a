"""What analyst SQL may run, checked before anything runs, and the engine settings that hold where a check misses.

Two layers (issue 13); either alone stops the escapes an analyst found:
1. The statement policy. Every statement must be a query: SELECT, or EXPLAIN [ANALYZE] of a SELECT (the
   statement inside EXPLAIN is parsed and checked like any other, and what runs is `EXPLAIN` + that checked
   text). Each query's parse tree (DuckDB's own parser, through `json_serialize_sql`) may only name the ledger's
   views and tables (and its own CTEs) and call allowlisted functions (`ledger/sql_functions.py`): a file path
   as a table, a table function that reads files, other databases or settings, and any function not reviewed
   are refused by name, with the view to use instead.
2. Lock-down settings on the connection once the ledger is attached and the views defined: file access only
   under the ledger's data path, the configuration locked, bounded memory and threads.
"""

import json
import re
from typing import Any

import duckdb

from ledger.connection import catalog_alias
from ledger.errors import LedgerError, LedgerReadOnlyError
from ledger.ledger import Ledger
from ledger.sql_functions import allowed_function_names, table_function_names

# Parse-tree node types: queries and the table references a FROM clause may hold. A table reference of any
# other type (a kind DuckDB adds later) is refused until reviewed.
_query_nodes = frozenset({"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE", "CTE_NODE"})
_table_refs = frozenset(
    {"BASE_TABLE", "TABLE_FUNCTION", "JOIN", "SUBQUERY", "EMPTY", "EXPRESSION_LIST", "PIVOT", "SHOW_REF"}
)
# A CTE name that could also be a file name (`"/etc/passwd"`, `"x.csv"`) would turn into a file read
# wherever it is out of scope; only plain identifiers may name a CTE.
_plain_identifier = re.compile(r"[a-z_][a-z0-9_]*\Z")
_leading_comments = re.compile(r"\s*(?:(?:--[^\n]*(?:\n|\Z)|/\*.*?\*/)\s*)*", re.S)
_explain_prefix = re.compile(_leading_comments.pattern + r"EXPLAIN\s+(ANALY[SZ]E\s+)?", re.I | re.S)

_read_advice = (
    "`royalty sql` reads the ledger through its views (docs/analytics.md) and its tables under lake.main; "
    "`royalty export` writes an epoch's statements as files"
)
_settings_advice = "the engine settings are fixed: `query_memory_mb_max`, `query_threads_max`, `query_s_max`"
_function_advice = {
    "ducklake_snapshots": "use the view `snapshots`",
    "ducklake_table_changes": "use the views, with --as-of-snapshot / --as-of-epoch for an earlier state",
    "ducklake_table_insertions": "use the views, with --as-of-snapshot / --as-of-epoch for an earlier state",
    "ducklake_table_deletions": "use the views, with --as-of-snapshot / --as-of-epoch for an earlier state",
    "current_setting": _settings_advice,
}
_prefix_advice = {
    "ducklake_": "DuckLake's own functions read the catalog: use the views, e.g. `snapshots`",
    "read_": "files are out of reach of analyst SQL",
    "parquet_": "files are out of reach of analyst SQL",
    "glob": "files are out of reach of analyst SQL",
    "sqlite_": "other databases are out of reach of analyst SQL",
    "postgres_": "other databases are out of reach of analyst SQL",
    "duckdb_": "the engine's catalog and settings are out of reach: DESCRIBE a view to see its columns",
}


class QueryRefusedError(LedgerReadOnlyError):
    """Analyst SQL that is not a read of the ledger's views and tables; refused before anything ran."""

    def __init__(self, refused: str, advice: str) -> None:
        self.statement = refused
        self.refused = refused
        self.advice = advice
        LedgerError.__init__(self, f"analyst SQL is read-only and reads the ledger only; refused {refused}. {advice}")


def readable_names(connection: duckdb.DuckDBPyConnection) -> tuple[frozenset[str], frozenset[str]]:
    """The lower-cased names analyst SQL may read: (the analyst views defined, the ledger's tables)."""
    views = connection.execute(
        "SELECT lower(view_name) FROM duckdb_views() WHERE temporary AND NOT internal"
    ).fetchall()
    tables = connection.execute(
        "SELECT lower(table_name) FROM duckdb_tables() WHERE database_name = ? AND schema_name = 'main'",
        [catalog_alias],
    ).fetchall()
    return frozenset(name for (name,) in views), frozenset(name for (name,) in tables)


def checked_statements(connection: duckdb.DuckDBPyConnection, sql: str) -> list[str]:
    """The statements of `sql` to run, each checked; `QueryRefusedError` before any runs if one is not a read."""
    check = _TreeCheck(*readable_names(connection))
    checked = []
    for statement in connection.extract_statements(sql):
        if statement.type == duckdb.StatementType.SELECT:
            checked.append(_checked_query(connection, statement.query, check))
        elif statement.type == duckdb.StatementType.EXPLAIN:
            checked.append(_checked_explain(connection, statement.query, check))
        else:
            raise _statement_refused(statement.type, statement.query)
    return checked


def _checked_explain(connection: duckdb.DuckDBPyConnection, text: str, check: "_TreeCheck") -> str:
    prefix = _explain_prefix.match(text)
    if prefix is None:
        raise QueryRefusedError(
            f"the EXPLAIN statement {_excerpt(text)}", "write it as EXPLAIN [ANALYZE] SELECT ..., without options"
        )
    inner = text[prefix.end() :]
    try:
        statements = connection.extract_statements(inner)
    except duckdb.ParserException:
        raise QueryRefusedError(
            f"the EXPLAIN statement {_excerpt(text)}", "write it as EXPLAIN [ANALYZE] SELECT ..., without options"
        ) from None
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        kind = statements[0].type if len(statements) == 1 else None
        raise _statement_refused(kind, inner, inside_explain=True)
    query = _checked_query(connection, statements[0].query, check)
    return ("EXPLAIN ANALYZE " if prefix.group(1) else "EXPLAIN ") + query


def _checked_query(connection: duckdb.DuckDBPyConnection, text: str, check: "_TreeCheck") -> str:
    (serialized,) = connection.execute("SELECT json_serialize_sql(?)", [text]).fetchone()
    tree = json.loads(serialized)
    if tree.get("error") or len(tree.get("statements", [])) != 1:
        raise QueryRefusedError(
            f"the statement {_excerpt(text)} (its parse tree cannot be checked: {tree.get('error_message', '')})",
            _read_advice,
        )
    check.walk(tree["statements"][0], frozenset())
    return text


class _TreeCheck:
    """Walks one query's parse tree (DuckDB's JSON form) and refuses the first name it may not use."""

    def __init__(self, views: frozenset[str], tables: frozenset[str]) -> None:
        self.views = views
        self.tables = views | tables

    def walk(self, node: Any, ctes: frozenset[str]) -> None:
        if isinstance(node, list):
            for item in node:
                self.walk(item, ctes)
            return
        if not isinstance(node, dict):
            return
        ctes = ctes | self._ctes_defined(node)
        kind = node.get("type") if "class" not in node else None
        if "function_name" in node:
            self._function(node)
        if kind is not None and "sample" in node and kind not in _query_nodes | _table_refs:
            raise QueryRefusedError(f"a table reference of kind {kind}", _read_advice)
        if kind == "BASE_TABLE" or (kind == "SHOW_REF" and node.get("table_name")):
            self._table(node.get("catalog_name", ""), node.get("schema_name", ""), node["table_name"], ctes)
        elif kind == "TABLE_FUNCTION":
            function = node["function"]
            self._table_function(function)
            self.walk([value for key, value in function.items() if key != "function_name"], ctes)
            self.walk([value for key, value in node.items() if key != "function"], ctes)
            return
        for value in node.values():
            self.walk(value, ctes)

    def _ctes_defined(self, node: dict) -> frozenset[str]:
        names = [entry["key"] for entry in (node.get("cte_map") or {}).get("map", [])]
        if node.get("type") == "RECURSIVE_CTE_NODE" and node.get("ctename"):
            names.append(node["ctename"])
        for name in names:
            if not _plain_identifier.match(name.lower()):
                raise QueryRefusedError(f"the CTE name `{name}`", "name a CTE with letters, digits and underscores")
        return frozenset(name.lower() for name in names)

    def _table(self, catalog: str, schema: str, name: str, ctes: frozenset[str]) -> None:
        catalog, schema, bare = catalog.lower(), schema.lower(), name.strip('"').lower()
        if not catalog and not schema and bare in ctes:
            return
        if catalog in ("", catalog_alias, "temp") and schema in ("", "main") and bare in self.tables:
            return
        qualified = ".".join(part for part in (catalog, schema, name) if part)
        looks_like_file = any(mark in name for mark in "/.\\:*")
        what = f"the file `{name}` as a table" if looks_like_file and not schema else f"the table `{qualified}`"
        views = ", ".join(sorted(self.views))
        raise QueryRefusedError(what, f"{_read_advice}. The views here: {views}")

    def _function(self, node: dict) -> None:
        name = str(node["function_name"]).lower()
        qualified = node.get("catalog") or node.get("schema", "") not in ("", "main")
        if qualified or name not in allowed_function_names:
            raise QueryRefusedError(f"the function `{node['function_name']}`", _advice_for(name))

    def _table_function(self, function: dict) -> None:
        name = str(function["function_name"]).lower()
        qualified = function.get("catalog") or function.get("schema", "") not in ("", "main")
        if qualified or name not in table_function_names:
            raise QueryRefusedError(f"the table function `{function['function_name']}`", _advice_for(name))


def _advice_for(name: str) -> str:
    if name in _function_advice:
        return _function_advice[name]
    for prefix, advice in _prefix_advice.items():
        if name.startswith(prefix):
            return f"{advice}; {_read_advice}"
    return f"it is not on the allowlist of analyst functions (ledger/sql_functions.py); {_read_advice}"


def _statement_refused(kind: duckdb.StatementType | None, text: str, inside_explain: bool = False) -> QueryRefusedError:
    # Named by its own keyword, not its type: INSTALL and LOAD are both of type LOAD.
    words = text[_leading_comments.match(text).end() :].split(maxsplit=1)
    keyword = words[0].upper() if words else (kind.name if kind else "")
    name = "several statements" if kind is None else f"the {keyword} statement"
    where = " inside EXPLAIN" if inside_explain else ""
    excerpt = f" ({_excerpt(text)})" if text.strip() else " (written by PIVOT without an IN list: list the values)"
    return QueryRefusedError(
        f"{name}{where}{excerpt}",
        "Analysts run queries only (SELECT, or EXPLAIN [ANALYZE] SELECT): only `royalty ingest` and the settlement "
        "jobs write, the engine settings are fixed (`query_memory_mb_max`, `query_threads_max`, "
        "`query_s_max`) and no extension, file or other database can be attached or loaded",
    )


def _excerpt(text: str) -> str:
    return repr(" ".join(text.split())[:120])


def lock_down_statements(data_path: str, memory_mb: int, threads: int) -> list[str]:
    """The settings that bound an analyst connection once the ledger is attached and the views defined.

    Files are reachable only under the data path: `enable_external_access = false` alone fails DuckLake's own
    Parquet reads, and `allowed_directories` admits them (reads and writes: the statement policy refuses
    COPY). A SQLite catalog and PostgreSQL are already attached, and a new ATTACH of either is refused. The
    configuration is locked last, so no statement can undo these. Not stopped here: `postgres_execute` on
    the attached PostgreSQL catalog, which only the statement policy and a SELECT-only catalog role refuse.
    """
    return [
        f"SET allowed_directories = ['{data_path.replace(chr(39), chr(39) * 2)}'];",
        "SET enable_external_access = false;",
        f"SET memory_limit = '{int(memory_mb)}MB';",
        f"SET threads = {int(threads)};",
        "SET lock_configuration = true;",
    ]


def lock_down(ledger: Ledger, memory_mb: int, threads: int) -> None:
    """Apply `lock_down_statements` to the ledger's connection: from here on it only reads."""
    for statement in lock_down_statements(ledger.location.data_path, memory_mb, threads):
        ledger.connection.execute(statement.rstrip(";"))
