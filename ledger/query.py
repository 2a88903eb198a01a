"""Read-only SQL over the ledger, with the analyst views defined."""

import re
import threading
from collections.abc import Callable, Iterable
from importlib import resources

import duckdb
import pyarrow as pa

from ledger.errors import QueryTimeoutError
from ledger.ledger import Ledger, retrying_contention
from ledger.sql_policy import checked_statements

# Further analyst views, by owner (e.g. the settlement's, over its tables): each a function returning CREATE
# VIEW statements, defined after the ledger's own in the order registered.
_registered_views: dict[str, Callable[[], list[str]]] = {}


def sql_statements(text: str) -> list[str]:
    """The statements of a views file: `--` comment lines dropped, each statement ending with `;` at a line end."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    return [statement.strip().rstrip(";") + ";" for statement in "\n".join(lines).split(";\n") if statement.strip()]


def register_views(owner: str, statements: Callable[[], list[str]]) -> None:
    """Declare `owner`'s analyst views (over tables it registered with `ledger.tables.register_table`).

    `statements()` is called each time the views are defined, so table names come from `recorder.table`.
    Registering the same owner again replaces its views.
    """
    _registered_views[owner] = statements


def analyst_view_statements() -> list[str]:
    """The CREATE VIEW statements of `views.sql`, then those of each registered owner, one string each."""
    own = sql_statements(resources.files("ledger").joinpath("views.sql").read_text())
    return own + [statement for statements in _registered_views.values() for statement in statements()]


def define_views(ledger: Ledger, only: Iterable[str] | None = None) -> None:
    """Create the analyst views; a view over a table this ledger does not have yet is left out. `only`: just those
    views and the views they read (a check that queries one view need not define all thirty)."""
    statements = analyst_view_statements()
    for statement in statements if only is None else views_reading(statements, only):
        try:
            ledger.connection.execute(statement.rstrip(";"))
        except duckdb.CatalogException:
            # e.g. the settlement views before the first epoch was ever closed on this ledger
            continue


def views_reading(statements: list[str], names: Iterable[str]) -> list[str]:
    """Of `statements` (`analyst_view_statements`), in their order, those defining `names` and every view they read,
    directly or not (a view is taken to read each other view whose name appears in it as a word)."""
    named = [(match.group(1) if (match := _view_name.search(s)) else "", s) for s in statements]
    views = {name for name, _ in named}
    wanted, stack = set(names), list(names)
    while stack:
        name = stack.pop()
        for text in (text for view, text in named if view == name):
            for other in views - wanted:
                if re.search(rf"\b{other}\b", text):
                    wanted.add(other)
                    stack.append(other)
    return [text for name, text in named if name in wanted]


_view_name = re.compile(r"\bVIEW\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)", re.IGNORECASE)


def run_query(ledger: Ledger, sql: str, timeout_s: float | None = None) -> pa.Table:
    """Run one or more read-only statements; return the last one's result as Arrow.

    Every statement is checked by the analyst statement policy (`ledger.sql_policy`) before any runs:
    `QueryRefusedError` (a `LedgerReadOnlyError`) names what was refused. With `timeout_s`, the whole run
    is interrupted past that many seconds (QueryTimeoutError).
    """
    statements = retrying_contention(lambda: checked_statements(ledger.connection, sql))
    timer = None
    if timeout_s is not None:
        timer = threading.Timer(timeout_s, ledger.connection.interrupt)
        timer.daemon = True
        timer.start()
    result: pa.Table | None = None
    try:
        for statement in statements:
            result = _execute_retrying(ledger, statement)
    except duckdb.InterruptException:
        raise QueryTimeoutError(timeout_s or 0) from None
    finally:
        if timer is not None:
            timer.cancel()
    return result if result is not None else pa.table({})


def _execute_retrying(ledger: Ledger, statement: str) -> pa.Table:
    """Run one read-only statement, again while it meets another writer's commit (an analyst's query beside ingest
    on a SQLite catalog reads the catalog while an append holds its lock). On the same connection: a fresh one
    would not carry the analyst's lock-down and views."""
    return retrying_contention(lambda: ledger.connection.execute(statement).fetch_arrow_table())
