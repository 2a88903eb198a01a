"""The verb `receipt`: a payer's proof that a metered event was counted in its epoch (`settlement.reports.receipts`)."""

from settlement.reports.receipts import Receipt, ReceiptError, payer_receipt

__all__ = ["Receipt", "ReceiptError", "payer_receipt"]
