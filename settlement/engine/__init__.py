"""The pure split engine: policies and lineage, exact allocation, splits, postings, reversals, epoch planning.

Polars in, polars out: no ledger connection, no web3, no rich (tests/test_import_direction.py). The SQL
reference (`reference_sql`) re-implements the rules in DuckDB SQL over in-memory frames, for tests and
benchmarks.
"""

from settlement.engine.authority import RegistryRules
from settlement.engine.epochs import EpochInputs, EpochPlan, PriorState, plan_epoch
from settlement.engine.exceptions import AmountOverflowError, EpochConflictError
from settlement.engine.figures import EpochFigures, summary_rows

__all__ = [
    "AmountOverflowError",
    "EpochConflictError",
    "EpochFigures",
    "EpochInputs",
    "EpochPlan",
    "PriorState",
    "RegistryRules",
    "plan_epoch",
    "summary_rows",
]
