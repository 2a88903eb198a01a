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


class RegistryNotSyncedError(SettlementError):
    """On-chain mode, but the ledger holds no synced block of that registry: nothing was written."""

    transient = False

    def __init__(self, contract: str) -> None:
        self.contract = contract
        super().__init__(
            f"registry_mode is onchain but the ledger holds no synced block of registry `{contract}`; nothing was "
            "written. Run `royalty sync-registry --rpc-url URL --registry ADDRESS` first, then close the epoch"
        )


class RegistryBehindError(SettlementError):
    """The synced registry ends before the epoch's latest event: a passed vote could silently not apply."""

    transient = True  # a later `sync-registry` catches up

    def __init__(self, block_number: int, block_time: object, latest_event_time: object) -> None:
        self.block_number = block_number
        self.block_time = block_time
        self.latest_event_time = latest_event_time
        super().__init__(
            f"the registry is synced up to block {block_number} at {block_time}, earlier than the epoch's latest "
            f"event at {latest_event_time}: a policy the chain set since could apply to those events; nothing was "
            "written. Run `royalty sync-registry` (the chain must have a confirmed block at or after that event "
            "time), then close the epoch again"
        )


class HoldersBehindError(SettlementError):
    """The epoch pays a token's holders but their synced Transfer logs end before the epoch's block range does."""

    transient = True  # a later `sync-holders` catches up

    def __init__(self, token: str, reason: str) -> None:
        self.token = token
        super().__init__(
            f"the epoch pays the holders of token `{token}` but {reason}; nothing was written. Run "
            f"`royalty sync-holders --rpc-url URL --token {token}`, then close the epoch again"
        )
