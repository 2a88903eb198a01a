"""The settlement's analyst views: `views.sql` here over its tables, `onchain/views.sql` over the chain's.

The SQL names its tables `${table}` and its accounts `${contributor_prefix}` (and the other names of
`settlement.engine.accounts`); `view_statements` fills them in from the ledger's recorder API and the
accounts module, so neither the catalog's schema nor an account prefix is spelled out twice.
"""

from importlib import resources
from string import Template

from ledger import recorder
from ledger.query import sql_statements
from ledger.tables import all_tables
from settlement.engine import accounts

_accounts = {
    "contributor_prefix": accounts.contributor_prefix,
    "model_prefix": accounts.model_prefix,
    "payer_prefix": accounts.payer_prefix,
    "suspense_account": accounts.suspense_account,
    "holder_dust_prefix": accounts.holder_dust_prefix,
}


def view_statements(package: str, file_name: str = "views.sql") -> list[str]:
    """The CREATE VIEW statements of `package`'s `file_name`, placeholders filled in.

    A placeholder naming neither a registered table nor an account raises `KeyError` (a bug in the SQL).
    """
    text = resources.files(package).joinpath(file_name).read_text()
    values = {name: recorder.table(name) for name in all_tables}
    values.update({name: accounts.sql_literal(value) for name, value in _accounts.items()})
    return sql_statements(Template(text).substitute(values))


def settlement_view_statements() -> list[str]:
    """The settlement's own views: epochs, postings, payables, balances, suspense items, ledger checks."""
    return view_statements("settlement")
