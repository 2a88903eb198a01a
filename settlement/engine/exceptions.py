"""Errors of the split engine and epoch closing (kept apart from `exceptions.py` for merkle)."""

from settlement.exceptions import SettlementError


class EpochConflictError(SettlementError):
    """Another process closed an epoch while this one was computing; nothing was written."""

    transient = True

    def __init__(self, epoch: int, latest_epoch: int) -> None:
        self.epoch = epoch
        self.latest_epoch = latest_epoch
        super().__init__(
            f"epoch `{epoch}` cannot be closed: the ledger already holds epoch `{latest_epoch}` "
            "(another `royalty close-epoch` ran concurrently); nothing was written, run it again"
        )


class AmountOverflowError(SettlementError):
    """An epoch amount does not fit the ledger's int64 columns."""

    transient = False

    def __init__(self, epoch: int, account: str, amount_micros: int) -> None:
        self.epoch = epoch
        self.account = account
        self.amount_micros = amount_micros
        super().__init__(
            f"epoch `{epoch}`: account `{account}` would move {amount_micros} micros, past int64; "
            "check the metered fees of this epoch for corrupt values before closing it"
        )
