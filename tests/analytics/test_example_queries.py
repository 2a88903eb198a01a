"""Every ```sql block of docs/analytics.md runs as `royalty sql` runs it (locked down, policy) and returns rows."""

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger import Ledger, define_views, run_query
from ledger.query import analyst_view_statements, register_views
from ledger.sql_policy import lock_down
from settlement.onchain.tables import chain_view_statements
from tests.conftest import repo_root

_block = re.compile(r"(?:<!-- needs: (?P<needs>[\w, ]+) -->\s*\n)?```sql\n(?P<sql>.*?)```", re.DOTALL)


def example_queries() -> list[tuple[str, list[str]]]:
    """(query, views it needs that may be missing) for each ```sql block, in document order."""
    text = (repo_root / "docs" / "analytics.md").read_text()
    return [
        (match["sql"], [v.strip() for v in (match["needs"] or "").split(",") if v.strip()])
        for match in _block.finditer(text)
    ]


def test_the_analyst_docs_hold_at_least_ten_example_queries() -> None:
    """The issue asks for ten or more example queries; count the runnable ```sql blocks."""
    assert len(example_queries()) >= 10


@pytest.fixture(scope="module")
def analyst_ledger(settled_lake: Path) -> Iterator[Ledger]:
    """One read-only ledger for every documented query, its views defined and locked down as `royalty sql` does."""
    with Ledger.open_read_only(settled_lake) as ledger:
        define_views(ledger)
        lock_down(ledger, memory_mb=1_024, threads=2)
        yield ledger


def test_every_analyst_view_is_defined_on_a_settled_ledger(settled_lake: Path) -> None:
    """Every view, the ledger's and the ones the settlement registers, is created on a settled ledger (which has
    every table): a broken view raises here instead of being left out as if its table were missing."""
    with Ledger.open_read_only(settled_lake) as ledger:
        for statement in analyst_view_statements():
            ledger.connection.execute(statement.rstrip(";"))
        views = {name for (name,) in ledger.connection.execute("SELECT view_name FROM duckdb_views()").fetchall()}
    assert {"epochs", "ledger_checks", "settlements", "chain_checks", "reconciliation"} <= views


def test_a_broken_settlement_view_fails_the_documented_queries(settled_lake: Path) -> None:
    """A settlement view naming a table that does not exist is left out by `define_views` (as on a ledger that
    never closed an epoch), so the documented query needing it fails instead of being skipped."""
    broken = ["CREATE OR REPLACE TEMP VIEW payout_leaves AS SELECT * FROM no_such_table;"]
    register_views("settlement.onchain", lambda: broken)
    try:
        with Ledger.open_read_only(settled_lake) as ledger:
            define_views(ledger)
            with pytest.raises(AssertionError, match="payout_leaves"):
                _require_views(ledger, ["claims", "payout_leaves"])
    finally:
        register_views("settlement.onchain", chain_view_statements)


def _require_views(ledger: Ledger, needs: list[str]) -> None:
    views = {name for (name,) in ledger.connection.execute("SELECT view_name FROM duckdb_views()").fetchall()}
    missing = [view for view in needs if view not in views]
    assert not missing, f"the settled ledger lacks the view(s) {', '.join(missing)} this query needs: one is broken"


@pytest.mark.parametrize(("query", "needs"), example_queries(), ids=lambda v: v[:50] if isinstance(v, str) else "")
def test_example_query_returns_rows_on_a_settled_ledger(analyst_ledger: Ledger, query: str, needs: list[str]) -> None:
    """Run one documented query as `royalty sql` does (engine locked down, statement policy); it must return rows."""
    _require_views(analyst_ledger, needs)
    result = run_query(analyst_ledger, query)
    assert result.num_rows > 0, query
