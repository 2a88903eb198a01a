"""The verb `close-epoch`: close the next epoch over the ledger (`settlement.closing`)."""

from settlement.closing import EpochSummary, close_epoch

__all__ = ["EpochSummary", "close_epoch"]
