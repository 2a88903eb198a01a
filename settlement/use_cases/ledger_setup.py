"""Declaring the settlement with the ledger: its tables (`ledger.tables.register_table`) and its analyst views
(`ledger.query.register_views`), the settlement's own, the token holders', the on-chain registry's and the chain
side's, in that order.

No settlement module declares anything when imported: every entry point (the `royalty` commands through
`royalty.common.load_settings`, the demo, the benchmarks, the tests' session) calls `register_with_ledger` once
before it opens a ledger, so the tables a writer creates, the inlined tables `royalty verify` and `backup` check
and the order the views are defined in never depend on which modules a command happened to import.
"""

from settlement import chain_registry, holders, tables
from settlement.onchain import tables as chain_tables


def register_with_ledger() -> None:
    """Declare every settlement table and analyst view with the ledger (idempotent; the same order each time)."""
    tables.register()
    holders.register()
    chain_registry.register()
    chain_tables.register()
