"""Errors of the schemas package."""


class RoyaltyError(Exception):
    """Root of every error royalty-engine raises on purpose."""


class SchemaError(RoyaltyError):
    """A message does not satisfy the producer contract.

    `field` is the dotted path of the offending field (`data.fee_micros`), or `None` when the
    message as a whole is at fault (not UTF-8, not JSON, too large).
    """

    def __init__(self, reason: str, field: str | None = None) -> None:
        self.reason = reason
        self.field = field
        super().__init__(f"field `{field}`: {reason}" if field else reason)
