"""A payout address in a registration must be one a wallet accepts: a wrong EIP-55 checksum (a typo) and the zero
address (tokens claimed for it are lost) are dead letters with the field named, in both decoders (issue 21)."""

import json

import pytest
from pydantic import ValidationError

from schemas import BatchDecoder
from schemas.events import ContributorRegistered

checksummed = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"


def _registration(address: str) -> bytes:
    return json.dumps(
        {
            "specversion": "1.0",
            "id": f"reg-{address}",
            "source": "//tests.example",
            "type": "ai.contributor.registered.v1",
            "time": "2026-11-24T12:00:00Z",
            "datacontenttype": "application/json",
            "data": {"contributor_id": "alice", "payout_address": address},
        }
    ).encode()


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("0x" + "0" * 40, "the zero address cannot be a payout address"),
        (checksummed[:-1] + "D", "fails the EIP-55 checksum"),
    ],
)
def test_a_zero_or_mistyped_payout_address_is_a_dead_letter(address: str, message: str) -> None:
    decoded = BatchDecoder().decode([_registration(address), _registration(checksummed)])
    [rejection] = decoded.rejections
    assert rejection.index == 0 and rejection.error.field == "data.payout_address" and message in str(rejection.error)
    assert str(rejection.error.code) == "field_invalid"
    assert decoded.tables["contributor_registered"].num_rows == 1
    with pytest.raises(ValidationError, match=message):
        ContributorRegistered(contributor_id="alice", payout_address=address)
