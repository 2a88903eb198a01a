"""The verb `settle`: close, build the payout tree, fund and propose its root (`settlement.onchain.settle`).

The tree a run writes commits to the epoch's bundle manifest (`settlement.reports.bundle.epoch_manifest`,
settlement-v2), which this verb hands to the chain side.
"""

from functools import partial

from settlement.onchain.settle import SettlementResult, SettleOutcome
from settlement.onchain.settle import settle as _settle
from settlement.reports.bundle import epoch_manifest

settle = partial(_settle, manifest_of=epoch_manifest)

__all__ = ["SettleOutcome", "SettlementResult", "settle"]
