"""Errors of the ingest package."""

from schemas.errors import RoyaltyError


class IngestError(RoyaltyError):
    """Base of every ingest error."""


class IngestConfigError(IngestError):
    """The service cannot start with these settings."""


class IngestLedgerFailingError(IngestError):
    """The service stopped while the ledger kept refusing a batch (stop requested, or failing too long)."""

    def __init__(self, why: str, messages: int, failing_s: float, error: Exception) -> None:
        self.why = why
        self.messages = messages
        self.failing_s = failing_s
        self.error = error
        super().__init__(
            f"ingest stopped {why} while the ledger had been failing for {failing_s:.0f} s; the last batch "
            f"({messages} messages) was not committed and is read again from the ledger's offsets on restart. "
            f"Last error: {error}"
        )
