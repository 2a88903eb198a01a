"""`views_reading`: a check that queries one analyst view defines just it and the views it reads (issue 20: the close's
reconciliation defined all thirty views at every close)."""

import re

from ledger.query import analyst_view_statements, views_reading
from settlement.use_cases.ledger_setup import register_with_ledger


def _view(name: str, body: str) -> str:
    return f"CREATE OR REPLACE TEMP VIEW {name} AS {body};"


def test_views_reading_keeps_the_views_read_transitively_in_their_order() -> None:
    statements = [
        _view("c", "SELECT 1 AS x"),
        _view("cc", "SELECT 2 AS x"),  # a name another contains: not read by `b`
        _view("b", "SELECT x FROM c"),
        _view("unrelated", "SELECT x FROM cc"),
        _view("a", "SELECT x FROM b UNION ALL SELECT 3"),
        _view("a", "SELECT x FROM b UNION ALL SELECT x FROM c"),  # defined again: both kept, in order
    ]
    assert views_reading(statements, ["a"]) == [statements[0], statements[2], statements[4], statements[5]]
    assert views_reading(statements, ["unrelated"]) == [statements[1], statements[3]]
    assert views_reading(statements, ["c"]) == [statements[0]]


def test_the_reconciliation_is_defined_with_every_view_it_reads() -> None:
    register_with_ledger()
    statements = analyst_view_statements()
    names = {statement.split(" VIEW ", 1)[1].split()[0] for statement in statements}
    chosen = views_reading(statements, ["reconciliation"])
    chosen_names = {statement.split(" VIEW ", 1)[1].split()[0] for statement in chosen}
    assert {"reconciliation", "ledger_checks", "metered_file_sums"} <= chosen_names
    for statement in chosen:  # closed: a chosen view reads no view left out
        body = re.split(r"\bAS\b", statement, maxsplit=1)[1]
        assert not {name for name in names - chosen_names if re.search(rf"\b{name}\b", body)}
    assert "inference_events" not in chosen_names  # the analyst's views it does not read are left out
    assert chosen == [s for s in statements if s in chosen]  # in the order they are defined
