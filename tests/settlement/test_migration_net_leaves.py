"""Leaves of a distributor deployed with `--migrate-from`: each address's cumulative units net of what the
predecessor's last root owes it (issue 16). The end-to-end run on anvil is
tests/settlement/test_settle_roles_anvil.py::test_a_distributor_migrated_mid_history_pays_no_unit_twice_and_loses_none.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from settlement.onchain.payout_tree import net_leaves

_addresses = st.sampled_from([f"0x{i:040x}" for i in range(1, 9)])
_units = st.dictionaries(_addresses, st.integers(0, 10**12), max_size=8)


@settings(max_examples=200, deadline=None)
@given(owed_old=_units, growth=_units)
def test_old_plus_new_pays_each_address_its_cumulative_never_twice(owed_old: dict, growth: dict) -> None:
    """Whatever the predecessor's last root owes and whatever was earned since, the old root's amount plus the new
    leaf is exactly the address's cumulative (never less: nothing lost; never more: nothing twice), and no leaf
    is zero."""
    cumulative = {a: owed_old.get(a, 0) + growth.get(a, 0) for a in {*owed_old, *growth}}
    net = net_leaves(cumulative, owed_old)
    assert all(units > 0 for units in net.values())
    for address, units in cumulative.items():
        assert owed_old.get(address, 0) + net.get(address, 0) == units


def test_an_address_whose_cumulative_fell_below_the_old_root_gets_no_leaf() -> None:
    """A cumulative below what the old root owes (a reversal after the migration) is no negative leaf: the
    address keeps what the old root promised, and the new tree owes it nothing until it grows past that."""
    assert net_leaves({"0xa": 70, "0xb": 50}, {"0xa": 100, "0xb": 20}) == {"0xb": 30}
