"""Credentials are masked in any text: libpq DSNs, catalog URLs, hosted RPC URLs (ledger/redact.py)."""

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.connection import LedgerLocation
from ledger.redact import dsn_password, redact, redact_url, without_password

# Passwords as operators choose them: letters, digits and punctuation that needs no quoting in a DSN.
passwords = st.text(string.ascii_letters + string.digits + "!#$%()*+,-.;<>?[]^_{|}~", min_size=8, max_size=40)


@given(password=passwords, before=st.sampled_from(["", "dbname=royalty host=db.internal "]))
def test_a_key_value_dsn_password_never_survives_redaction(password: str, before: str) -> None:
    """Property: whatever the password and wherever `password=` sits, the redacted DSN lacks it, keeps the rest."""
    dsn = f"postgres:{before}password={password} user=writer port=5432"
    shown = redact(dsn)
    assert password not in shown.replace("password=***", "")
    assert "user=writer port=5432" in shown and "password=***" in shown
    assert dsn_password(dsn) == password
    assert password not in without_password(dsn)


@given(password=st.text(string.ascii_letters + string.digits + "-._~!$&()*+,;=", min_size=8, max_size=40))
def test_a_url_password_never_survives_redaction(password: str) -> None:
    """Property: the user info of a postgresql:// URL is masked, quoted inside a longer message too."""
    url = f"postgresql://writer:{password}@db.internal:5432/royalty?sslmode=require"
    shown = redact(f'Unable to connect to Postgres at "{url}": timeout')
    assert "postgresql://writer:***@db.internal:5432/royalty?sslmode=require" in shown
    assert password not in shown.replace("writer:***@", "")


def test_quoted_passwords_and_ssl_passwords_are_masked() -> None:
    """libpq's quoted values (spaces, escaped quotes) and `sslpassword` are secrets too."""
    text = r"dbname=r password = 'a b\'c d' sslpassword=k3y-pass host=h"
    assert redact(text) == "dbname=r password = *** sslpassword=*** host=h"
    assert dsn_password(text) == "a b'c d"


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("https://mainnet.infura.io/v3/0123456789abcdef0123456789abcdef", "0123456789abcdef0123456789abcdef"),
        ("https://eth-mainnet.g.alchemy.com/v2/Ab-Cd_Ef0123456789ghIJklmnOPqrs", "Ab-Cd_Ef0123456789ghIJklmnOPqrs"),
        ("https://rpc:s3cr3t-key@node.example.com:8545", "s3cr3t-key"),
        ("https://node.example.com/rpc?apikey=Zx9-secret-value", "Zx9-secret-value"),
    ],
)
def test_rpc_urls_lose_their_api_key_in_any_message(url: str, key: str) -> None:
    """A hosted node's key (path segment, user info, query) is masked; once seen, also where a library quotes it."""
    assert key not in redact_url(url) and "***" in redact_url(url)
    assert key not in redact(f"HTTPError: 401 for url: {url}")
    assert key not in redact(f"the key {key} was refused")  # remembered by redact_url above


def test_a_local_node_url_and_a_plain_dsn_are_left_alone() -> None:
    """Nothing secret, nothing masked: an operator still reads where the command connected."""
    assert redact_url("http://127.0.0.1:8545") == "http://127.0.0.1:8545"
    assert redact("postgres:dbname=royalty host=db user=reader passfile=/home/a/.pgpass") == (
        "postgres:dbname=royalty host=db user=reader passfile=/home/a/.pgpass"
    )


def test_a_ledger_location_never_shows_its_password() -> None:
    """`display`, repr and the data-path error of a PostgreSQL location mask the password the catalog string holds."""
    location = LedgerLocation.parse("postgres:dbname=r host=h user=w password=Hunter2-secret", "/tmp/data")
    assert "Hunter2-secret" in location.catalog
    assert "Hunter2-secret" not in location.display and "Hunter2-secret" not in repr(location)
    with pytest.raises(ValueError) as refused:
        LedgerLocation.parse("postgresql://w:Hunter3-secret@h/r")
    assert "Hunter3-secret" not in str(refused.value)
