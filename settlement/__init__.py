"""The settlement batch job: epochs, splits, postings (and the Merkle tree in `merkle.py`)."""

from settlement import tables as _tables  # noqa: F401  (declares the settlement's ledger tables)
from settlement.epochs import EpochPlan, plan_epoch
from settlement.ledger_io import Progress
from settlement.report import EpochSummary, close_epoch, render_summary
from settlement.split_errors import AmountOverflowError, EpochConflictError

__all__ = [
    "AmountOverflowError",
    "EpochConflictError",
    "EpochPlan",
    "EpochSummary",
    "Progress",
    "close_epoch",
    "plan_epoch",
    "render_summary",
]
