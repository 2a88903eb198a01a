"""Declaring the settlement with the ledger: its tables (`ledger.tables.register_table`) and its analyst views
(`ledger.query.register_views`), the settlement's own and the chain side's, in that order."""

from settlement import holders, tables
from settlement.onchain import tables as chain_tables


def register_with_ledger() -> None:
    """Declare every settlement table and analyst view with the ledger (idempotent).

    A command that defines the analyst views on a ledger (`royalty sql`, its `--print-attach`) calls it first,
    so the settlement's views are there whichever settlement modules the command imported.
    """
    tables.register()
    holders.register()
    chain_tables.register()
