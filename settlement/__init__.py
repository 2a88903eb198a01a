"""Settlement: closing epochs over the ledger, the on-chain payout, and the reports.

Sub-packages, lowest first (tests/test_import_direction.py enforces it):

- `settlement.engine`: the pure split engine (policies, allocation, splits, postings, reversals, epoch
  planning, the SQL reference); polars only, no ledger connection, no web3, no rich.
- this package's own modules: the settlement's ledger tables, reading the engine's inputs from the
  ledger and writing its outputs (`ledger_io`), the input checks, and `close_epoch` (`closing`).
- `settlement.onchain`: the payout tree, the Merkle tree, the chain client, `settle`, claim sync.
- `settlement.reports`: exports and the HTML report.
- `settlement.use_cases`: one module per verb the CLI runs.

Names are imported on first use (`schemas.lazy_surface`).
"""

from schemas.lazy_surface import lazy_surface

__getattr__, __dir__, __all__ = lazy_surface(
    __name__,
    {
        "settlement.closing": ["EpochSummary", "close_epoch", "closed_by_another_message"],
        "settlement.engine": ["AmountOverflowError", "EpochConflictError", "EpochPlan", "plan_epoch"],
        "settlement.exceptions": ["SettlementError", "UnreconciledLedgerError", "UnverifiedInputError"],
        "settlement.input_checks": ["InputChecks"],
        "settlement.ledger_io": ["Progress"],
    },
)
