"""Errors of the ingest package."""

from schemas.errors import RoyaltyError


class IngestError(RoyaltyError):
    """Base of every ingest error."""


class IngestConfigError(IngestError):
    """The service cannot start with these settings."""
