"""Errors of the schemas package."""

from schemas.reason_codes import ReasonCode, reason_code_of


class RoyaltyError(Exception):
    """Root of every error royalty-engine raises on purpose.

    `transient` errors (a busy catalog, a node or broker that is down) may succeed when retried as they are;
    the others will not, and are reported at once. Batch commands exit 75 (EX_TEMPFAIL) on a transient one,
    so a scheduler retries, and 2 on the others.
    """

    transient: bool = False


class InvariantViolation(RoyaltyError):
    """A condition the code guarantees (conservation, balanced entries, a root that rebuilds) does not hold.

    Always checked, also under `python -O`: it means a bug or tampered data, never bad input, and the
    operation stops before writing or sending anything further.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(
            f"invariant violated: {what}. Stopped before writing or sending anything further; this is a bug or "
            "tampered data: keep the ledger as it is, run `royalty verify`, and report it"
        )


def require(condition: object, what: str) -> None:
    """Raise `InvariantViolation(what)` unless `condition` holds (an `assert` that `python -O` keeps)."""
    if not condition:
        raise InvariantViolation(what)


class SchemaError(RoyaltyError):
    """A message does not satisfy the producer contract.

    `field` is the dotted path of the offending field (`data.fee_micros`), or `None` when the
    message as a whole is at fault (not UTF-8, not JSON, too large). `code` is the stable
    `ReasonCode` its dead letter stores; when not given it is derived from the text.
    """

    def __init__(self, reason: str, field: str | None = None, code: ReasonCode | None = None) -> None:
        self.reason = reason
        self.field = field
        super().__init__(f"field `{field}`: {reason}" if field else reason)
        self.code = code if code is not None else reason_code_of(str(self), field)
