"""The figures of an epoch are declared once (`settlement.engine.figures.EpochFigures`); the epoch table,
its row, the summary table and the HTML report's figures follow them."""

from dataclasses import fields
from datetime import UTC, datetime

import pyarrow as pa

from settlement import EpochPlan, EpochSummary
from settlement.engine.figures import EpochFigures, epoch_row, figure_names, report_figures, summary_rows
from settlement.tables import epoch_schema


def _figures() -> EpochFigures:
    return EpochFigures(*range(1, len(figure_names) + 1))


def test_the_epoch_table_row_summary_and_report_follow_the_one_declaration() -> None:
    figures = _figures()
    closed_at = datetime(2026, 1, 2, tzinfo=UTC)
    row = pa.Table.from_pylist([epoch_row(figures, closed_at)], schema=epoch_schema).to_pylist()[0]
    assert row == {**{name: getattr(figures, name) for name in figure_names}, "closed_at": closed_at}
    assert epoch_schema.names == ["epoch", "previous_snapshot", "closing_snapshot", "closed_at", *figure_names[3:]]
    assert [value for _, value in summary_rows(figures)] == [getattr(figures, n) for n in figure_names[3:]]
    shown = [name for _, name, _ in report_figures()]
    assert set(shown) == set(figure_names[3:]) - {"group_count"}
    assert all(is_money == name.endswith("_micros") for _, name, is_money in report_figures())


def test_the_plan_and_the_summary_carry_the_same_figures() -> None:
    names = [f.name for f in fields(EpochFigures)]
    assert [f.name for f in fields(EpochPlan)][: len(names)] == names
    assert [f.name for f in fields(EpochSummary)][: len(names)] == names
