"""The figures of one epoch, declared once.

`EpochFigures` is the base of the engine's `EpochPlan` and of `close_epoch`'s `EpochSummary`; the
`settlement_epoch` table's Arrow schema, its row, the rows of `royalty close-epoch`'s summary table
and the figures of the HTML report are all derived from its fields and their metadata.
"""

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any


def _figure(label: str | None = None, report_label: str | None = None, report_position: int = 0) -> Any:
    """A figure's metadata: its label in the summary table, and its label and position in the HTML report."""
    return field(metadata={"label": label, "report_label": report_label, "report_position": report_position})


@dataclass(frozen=True)
class EpochFigures:
    """What an epoch closed over and what it moved. Money in micros; every figure an int."""

    epoch: int = _figure()
    previous_snapshot: int = _figure()
    closing_snapshot: int = _figure()
    event_count: int = _figure("events", "events", 1)
    fee_micros: int = _figure("fees (micros)", "fees", 2)
    reversal_count: int = _figure("reversals", "reversals", 3)
    reversed_micros: int = _figure("reversed (micros)", "reversed", 4)
    dead_letter_count: int = _figure("reversal dead letters", "reversal dead letters", 10)
    suspended_micros: int = _figure("suspended (micros)", "suspended", 5)
    released_micros: int = _figure("released from suspense (micros)", "released from suspense", 6)
    suspense_micros: int = _figure("suspense balance (micros)", "suspense balance", 7)  # held after the epoch
    payable_micros: int = _figure("payable (micros)", "payable", 8)
    receivable_micros: int = _figure("receivables (micros)", "receivables", 9)  # owed back after the epoch
    group_count: int = _figure("allocation groups")


figure_names = tuple(f.name for f in fields(EpochFigures))
# The figures before which the epoch row records when it was closed.
_identity_count = 3


def figure_values(source: object) -> dict[str, int]:
    """The figures of `source` (any object with them as attributes, e.g. an `EpochPlan`), by name."""
    return {name: getattr(source, name) for name in figure_names}


def epoch_row_columns() -> list[str]:
    """The columns of a `settlement_epoch` row: the figures, with `closed_at` after the snapshots."""
    names = list(figure_names)
    return [*names[:_identity_count], "closed_at", *names[_identity_count:]]


def epoch_row(figures: EpochFigures, closed_at: datetime) -> dict[str, Any]:
    """The `settlement_epoch` row of `figures` (the columns of `settlement.tables.epoch_schema`, in order)."""
    values = figure_values(figures)
    names = list(figure_names)
    return {
        **{name: values[name] for name in names[:_identity_count]},
        "closed_at": closed_at,
        **{name: values[name] for name in names[_identity_count:]},
    }


def summary_rows(figures: EpochFigures) -> list[tuple[str, int]]:
    """(label, value) of every figure the summary table shows, in declaration order."""
    return [(f.metadata["label"], getattr(figures, f.name)) for f in fields(EpochFigures) if f.metadata["label"]]


def report_figures() -> list[tuple[str, str, bool]]:
    """(label, name, is money) of every figure the HTML report shows, in its order."""
    shown = sorted(
        (f for f in fields(EpochFigures) if f.metadata["report_label"]), key=lambda f: f.metadata["report_position"]
    )
    return [(f.metadata["report_label"], f.name, f.name.endswith("_micros")) for f in shown]
