"""Errors of the `royalty` package (the CLI, its settings and the demo); each a `RoyaltyError`."""

from pathlib import Path

from schemas.errors import RoyaltyError


class ConfigError(RoyaltyError):
    """A setting is missing or malformed."""


class DemoWorkdirError(RoyaltyError):
    """The demo's workdir already holds a ledger, which the demo would replace."""

    def __init__(self, lake: Path) -> None:
        self.lake = lake
        super().__init__(
            f"`{lake}` already exists and the demo starts from an empty ledger, so it would be deleted; "
            "nothing was changed. Pick another --workdir, or pass --force to delete it"
        )


class DemoChainError(RoyaltyError):
    """A transaction the demo sends to its in-process chain failed (a bug in the demo, not in the user's setup)."""
