"""The verb `settle`: close, build the payout tree, fund and propose its root (`settlement.onchain.settle`).

The tree a run writes commits to the epoch's bundle manifest (`settlement.reports.bundle.epoch_manifest`,
settlement-v2), which this verb hands to the chain side.
"""

from functools import partial
from typing import Any

from settlement.onchain.settle import SettlementResult, SettleOutcome
from settlement.onchain.settle import settle as _settle
from settlement.reports.bundle import epoch_manifest


def settle(*args: Any, payer_receipts: bool = True, **kwargs: Any) -> SettlementResult:
    """`settlement.onchain.settle.settle`, committing to the epoch's manifest (with the event commitment unless
    `payer_receipts` is off: the deployment's setting)."""
    return _settle(*args, manifest_of=partial(epoch_manifest, receipts=payer_receipts), **kwargs)

__all__ = ["SettleOutcome", "SettlementResult", "settle"]
