"""The close's duplicate check over the epoch's events: the sorted-hash test finds every repeated (source, id)."""

from datetime import UTC, datetime, timedelta

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from settlement.engine.splits import event_columns
from settlement.ledger_io import _deduplicated, _holds_equal_values

_rows = st.lists(
    st.tuples(st.sampled_from(["//gw-a", "//gw-b"]), st.integers(0, 12), st.integers(0, 3), st.integers(1, 9)),
    max_size=40,
)


def _events(rows: list[tuple[str, int, int, int]]) -> pl.DataFrame:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return pl.DataFrame(
        [
            {
                "event_id": str(event_id),
                "source": source,
                "event_time": start + timedelta(hours=hour),
                "model_id": "m0",
                "payer": "p",
                "compute_provider": "g",
                "fee_micros": fee,
            }
            for source, event_id, hour, fee in rows
        ],
        schema={
            "event_id": pl.String,
            "source": pl.String,
            "event_time": pl.Datetime("us", "UTC"),
            "model_id": pl.String,
            "payer": pl.String,
            "compute_provider": pl.String,
            "fee_micros": pl.Int64,
        },
    )


@settings(max_examples=150, deadline=None)
@given(values=st.lists(st.integers(0, 30), max_size=50))
def test_equal_values_are_found_exactly_when_some_value_repeats(values: list[int]) -> None:
    assert _holds_equal_values(pl.Series(values, dtype=pl.UInt64)) == (len(set(values)) < len(values))


@settings(max_examples=100, deadline=None)
@given(rows=_rows)
def test_each_source_and_id_is_kept_once_the_least_row_first(rows: list[tuple[str, int, int, int]]) -> None:
    """Rows repeated under one (source, id), with the same or other content, leave one row: the least in column
    order; the same id under two sources is two events."""
    events = _events(rows)
    kept = _deduplicated(events.lazy()).collect()
    expected = events.sort(event_columns).unique(["source", "event_id"], keep="first", maintain_order=True)
    assert kept.sort(event_columns).equals(expected.sort(event_columns))
    assert kept.height == len({(source, event_id) for source, event_id, _, _ in rows})
