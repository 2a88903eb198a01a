"""Errors of the settlement package."""

from schemas.errors import RoyaltyError


class SettlementError(RoyaltyError):
    """Base of every error the settlement package raises on purpose."""


class UnverifiedInputError(SettlementError):
    """Data files a settlement step reads fail their recorded checksum: nothing was written or sent."""

    transient = False

    def __init__(self, what: str, problems: list[str]) -> None:
        self.what = what
        self.problems = problems
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        super().__init__(
            f"{what}: {len(problems)} data file(s) it reads are not the ones the ledger wrote ({shown}); nothing "
            "was written or sent. Run `royalty verify` to list every problem and restore those files from a backup "
            "(docs/operations.md); only once you have investigated and accept them as they are, run this again "
            "with `--accept-unverified-files`"
        )


class UnreconciledLedgerError(SettlementError):
    """The `reconciliation` view has a non-zero row: money already recorded does not add up."""

    transient = False

    def __init__(self, what: str, rows: list[tuple[str, int, int, int]]) -> None:
        self.what = what
        self.rows = rows  # (check_name, epoch, items_off, difference_micros)
        shown = "; ".join(
            f"{check} in epoch {epoch}: {items} item(s) off by {difference} micros"
            for check, epoch, items, difference in rows[:5]
        ) + (f"; and {len(rows) - 5} more" if len(rows) > 5 else "")
        super().__init__(
            f"{what}: the reconciliation checks are not all zero ({shown}); nothing was written or sent. See them "
            "with `royalty sql \"SELECT * FROM reconciliation WHERE items_off <> 0 OR difference_micros <> 0\"` "
            "and `royalty verify`; only once you have investigated, run this again with `--accept-unreconciled`"
        )
