"""The verb `settle`: close, build the payout tree, fund and propose its root (`settlement.onchain.settle`)."""

from settlement.onchain.settle import SettlementResult, SettleOutcome, settle

__all__ = ["SettleOutcome", "SettlementResult", "settle"]
