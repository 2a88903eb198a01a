"""Every field of the producer contract, defined once.

The pydantic models in `events.py` are built from these types; the fast batch decoder and the
Arrow schemas are derived from those models, so a constraint changed here changes everywhere.
"""

import re
from datetime import UTC, datetime
from typing import Annotated

from eth_utils import is_checksum_address
from pydantic import AfterValidator, AwareDatetime, Field, StringConstraints

from schemas import limits

# No ':' in an identifier, so that `model:<id>` can never be confused with a contributor id.
identifier_pattern = r"^[A-Za-z0-9][A-Za-z0-9._@/+-]*$"
model_recipient_prefix = "model:"
# `holders:<token address>`: the holders of an ERC-20, pro rata to their time-weighted balances (settlement.holders).
holders_recipient_prefix = "holders:"


def check_payout_address(value: str) -> str:
    """Require an EIP-55 mixed-case checksummed address, so a mistyped one is caught."""
    if not re.fullmatch(r"0x[0-9a-fA-F]{40}", value):
        raise ValueError(f"`{value}` is not a 20-byte hex address (0x followed by 40 hex digits)")
    if not is_checksum_address(value):
        raise ValueError(f"`{value}` fails the EIP-55 checksum; send the checksummed (mixed-case) form")
    if int(value, 16) == 0:
        raise ValueError("the zero address cannot be a payout address: tokens claimed for it are lost")
    return value


def check_recipient(value: str) -> str:
    """A recipient is a contributor id, `model:<parent model id>` or `holders:<token address>` (the holders of
    an ERC-20, paid by their time-weighted balances; the address EIP-55 checksummed)."""
    if value.startswith(holders_recipient_prefix):
        token = value.removeprefix(holders_recipient_prefix)
        if not re.fullmatch(r"0x[0-9a-fA-F]{40}", token) or not is_checksum_address(token) or int(token, 16) == 0:
            raise ValueError(f"`{value}`: holders of a token are named `holders:<checksummed token address>`")
        return value
    target = value.removeprefix(model_recipient_prefix)
    if not re.fullmatch(identifier_pattern, target):
        raise ValueError(f"`{value}` is neither a contributor id nor `model:<model id>` nor `holders:<token>`")
    return value


Identifier = Annotated[
    str,
    StringConstraints(min_length=1, max_length=limits.identifier_chars_max, pattern=identifier_pattern),
]
# Free-form ids and sources, but printable: a control character (NUL above all) is a producer bug, and
# an id is used as a key in SQL filters, logs and proofs where such characters break or hide things.
printable_pattern = r"^[^\x00-\x1f\x7f]+$"
EventId = Annotated[
    str, StringConstraints(min_length=1, max_length=limits.event_id_chars_max, pattern=printable_pattern)
]
Source = Annotated[str, StringConstraints(min_length=1, max_length=limits.source_chars_max, pattern=printable_pattern)]
# A time before this is a producer clock error, not a real event.
EventTime = Annotated[AwareDatetime, Field(ge=datetime(limits.event_year_min, 1, 1, tzinfo=UTC))]
Tokens = Annotated[int, Field(ge=0, le=limits.tokens_max)]
FeeMicros = Annotated[int, Field(gt=0, le=limits.fee_micros_max)]
SharePpm = Annotated[int, Field(ge=0, le=limits.ppm_total)]
PositiveSharePpm = Annotated[int, Field(gt=0, le=limits.ppm_total)]
AssetCode = Annotated[str, StringConstraints(min_length=1, max_length=16, pattern=r"^[A-Z0-9][A-Z0-9.-]*$")]
PayoutAddress = Annotated[str, AfterValidator(check_payout_address)]
Recipient = Annotated[
    str,
    StringConstraints(min_length=1, max_length=limits.identifier_chars_max + len(model_recipient_prefix)),
    AfterValidator(check_recipient),
]
Reason = Annotated[str, StringConstraints(min_length=1, max_length=limits.reason_chars_max)]
