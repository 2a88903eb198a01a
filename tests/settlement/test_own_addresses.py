"""On-chain mode: an account that is an address is paid at the payout address it set on the registry, whatever the
case a gateway writes it in (a compute provider is free text in metering events); else at itself."""

import polars as pl
from eth_utils import to_checksum_address

from settlement.chain_registry import address_schema, with_own_addresses

provider = to_checksum_address("0x" + "ab" * 20)
payout = to_checksum_address("0x" + "cd" * 20)


def test_a_provider_written_in_lowercase_is_paid_at_the_payout_address_its_account_set() -> None:
    """The registry keys `PayoutAddressSet` by the checksummed account; a provider metered as the lowercase address
    was paid at itself, ignoring the payout address its account set (the credit went to the old address)."""
    registry = pl.DataFrame({"contributor_id": [provider], "payout_address": [payout]}, schema=address_schema)
    addresses = with_own_addresses(registry, [provider.lower(), "gpu-1", "0x" + "ef" * 20])
    paid_at = dict(addresses.iter_rows())
    assert paid_at[provider.lower()] == payout  # was the provider's own address
    assert paid_at[provider] == payout
    assert paid_at["0x" + "ef" * 20] == to_checksum_address("0x" + "ef" * 20)  # none set: paid at itself
    assert "gpu-1" not in paid_at  # no address: unaddressed until it registers one
