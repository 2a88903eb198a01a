"""Settlement: closing epochs over the ledger, the on-chain payout, and the reports.

Sub-packages, lowest first (tests/test_import_direction.py enforces it):

- `settlement.engine`: the pure split engine (policies, allocation, splits, postings, reversals, epoch
  planning, the SQL reference); polars only, no ledger connection, no web3, no rich.
- this package's own modules: the settlement's ledger tables, reading the engine's inputs from the
  ledger and writing its outputs (`ledger_io`), the input checks, and `close_epoch` (`closing`).
- `settlement.onchain`: the payout tree, the Merkle tree, the chain client, `settle`, claim sync.
- `settlement.reports`: exports and the HTML report.
- `settlement.use_cases`: one module per verb the CLI runs.
"""

from settlement.closing import EpochSummary, close_epoch, closed_by_another_message
from settlement.engine import AmountOverflowError, EpochConflictError, EpochPlan, plan_epoch
from settlement.exceptions import SettlementError, UnreconciledLedgerError, UnverifiedInputError
from settlement.input_checks import InputChecks
from settlement.ledger_io import Progress

__all__ = [
    "AmountOverflowError",
    "EpochConflictError",
    "EpochPlan",
    "EpochSummary",
    "InputChecks",
    "Progress",
    "SettlementError",
    "UnreconciledLedgerError",
    "UnverifiedInputError",
    "close_epoch",
    "closed_by_another_message",
    "plan_epoch",
]
