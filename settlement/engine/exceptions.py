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


class CompactedWhilePlanningError(SettlementError):
    """A compaction merged files across the snapshot this epoch was planned at; nothing was written."""

    transient = True

    def __init__(self, epoch: int, closing_snapshot: int) -> None:
        self.epoch = epoch
        self.closing_snapshot = closing_snapshot
        super().__init__(
            f"epoch `{epoch}` cannot be closed at snapshot {closing_snapshot}: a `royalty compact` merged files "
            "across that snapshot while the epoch was planned (an epoch never splits a merged file); nothing was "
            "written, run it again"
        )


class ExpiredWhilePlanningError(SettlementError):
    """A `royalty expire` expired the snapshot this epoch was planned at; nothing was written."""

    transient = True

    def __init__(self, epoch: int, closing_snapshot: int) -> None:
        self.epoch = epoch
        self.closing_snapshot = closing_snapshot
        super().__init__(
            f"epoch `{epoch}` cannot be closed at snapshot {closing_snapshot}: a `royalty expire` expired that "
            "snapshot while the epoch was planned (an epoch closes on a snapshot time travel reaches); nothing was "
            "written, run it again"
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
