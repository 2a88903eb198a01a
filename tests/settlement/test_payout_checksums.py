"""`address_leaves` checksums its addresses in one batch (EIP-55 through `tree_hashing.checksum_bodies`), giving
exactly web3's `to_checksum_address` of each; an address that is not 0x and 40 hex digits still fails as before."""

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from web3 import Web3

from settlement.onchain.payout_tree import address_leaves

_address = st.integers(min_value=0, max_value=2**160 - 1).map(lambda n: f"0x{n:040x}")


def _payables(addresses: list[str]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "recipient": [f"c{i}" for i in range(len(addresses))],
            "epoch": [1] * len(addresses),
            "payout_address": addresses,
            "amount_micros": [i + 1 for i in range(len(addresses))],
        }
    )


@settings(max_examples=60, deadline=None)
@given(addresses=st.lists(_address, max_size=30), upper=st.booleans())
def test_address_leaves_are_keyed_by_web3_checksums(addresses, upper):
    given_addresses = [a.upper().replace("0X", "0x") if upper else a for a in addresses]
    leaves, unaddressed = address_leaves(_payables(given_addresses))
    expected: dict[str, int] = {}
    for i, a in enumerate(addresses):
        key = Web3.to_checksum_address(a)
        expected[key] = expected.get(key, 0) + i + 1
    assert leaves == expected and unaddressed == 0


def test_a_malformed_address_is_refused_as_web3_refuses_it():
    with pytest.raises(ValueError):
        address_leaves(_payables(["0x" + "ab" * 19, "0x" + "12" * 20]))
