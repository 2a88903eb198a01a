"""How ModelRegistry names things, and how the ledger's registry records name the same things.

On-chain a model or dataset id is a `bytes32`: an identifier (`schemas.fields.identifier_pattern`) of at most
32 ASCII characters, left-aligned and zero-padded. An account is an address; a split's recipient is
`(kind, bytes32 id, share_ppm)` with kind 0 an account (the address right-aligned), 1 a parent model, 2 a
dataset, 3 the holders of an ERC-20 (the token's address right-aligned). Off-chain the same recipient is the
checksummed address, `model:<id>`, `dataset:<id>` or `holders:<token address>`.
"""

from __future__ import annotations

import re

from eth_utils import to_checksum_address

from schemas.fields import holders_recipient_prefix, identifier_pattern, model_recipient_prefix
from settlement.onchain.exceptions import ChainConfigError

ACCOUNT, MODEL, DATASET, HOLDERS = 0, 1, 2, 3
dataset_recipient_prefix = "dataset:"
id_bytes_max = 32


def id_word(identifier: str) -> bytes:
    """The `bytes32` of an identifier; refuses one that is not an identifier of at most 32 ASCII characters."""
    raw = identifier.encode("ascii", errors="replace")
    if not re.fullmatch(identifier_pattern, identifier) or len(raw) > id_bytes_max:
        raise ChainConfigError(
            f"`{identifier}` cannot be a registry id: ids are identifiers of 1 to {id_bytes_max} ASCII characters "
            "(letters, digits, `._@/+-`, not starting with punctuation)",
            "model_id",
        )
    return raw.ljust(id_bytes_max, b"\x00")


def word_id(word: bytes) -> str | None:
    """The identifier a `bytes32` holds, or None when it holds none (such a record is never paid)."""
    text = bytes(word).rstrip(b"\x00")
    try:
        identifier = text.decode("ascii")
    except UnicodeDecodeError:
        return None
    return identifier if re.fullmatch(identifier_pattern, identifier) else None


def account_word(address: str) -> bytes:
    """The `bytes32` id of an account recipient: its address, right-aligned."""
    return bytes.fromhex(to_checksum_address(address)[2:]).rjust(id_bytes_max, b"\x00")


def recipient_name(kind: int, word: bytes) -> str | None:
    """The ledger's name of an on-chain recipient (address, `model:<id>`, `dataset:<id>`, `holders:<token>`);
    None if malformed."""
    if kind == ACCOUNT:
        return to_checksum_address(bytes(word)[-20:])
    if kind == HOLDERS:
        return holders_recipient_prefix + to_checksum_address(bytes(word)[-20:])
    identifier = word_id(word)
    if identifier is None:
        return None
    return (model_recipient_prefix if kind == MODEL else dataset_recipient_prefix) + identifier


def recipient_tuple(name: str, share_ppm: int) -> tuple[int, bytes, int]:
    """The on-chain `Share` of a ledger recipient name (address, `model:<id>`, `dataset:<id>`, `holders:<token>`)."""
    if name.startswith(model_recipient_prefix):
        return (MODEL, id_word(name.removeprefix(model_recipient_prefix)), share_ppm)
    if name.startswith(dataset_recipient_prefix):
        return (DATASET, id_word(name.removeprefix(dataset_recipient_prefix)), share_ppm)
    if name.startswith(holders_recipient_prefix) and re.fullmatch(
        r"0x[0-9a-fA-F]{40}", name.removeprefix(holders_recipient_prefix)
    ):
        return (HOLDERS, account_word(name.removeprefix(holders_recipient_prefix)), share_ppm)
    if not re.fullmatch(r"0x[0-9a-fA-F]{40}", name):
        raise ChainConfigError(
            f"recipient `{name}` is neither an address nor `model:<id>`, `dataset:<id>` or `holders:<token address>`: "
            "on-chain, accounts are addresses",
            "shares",
        )
    return (ACCOUNT, account_word(name), share_ppm)


def sorted_shares(shares: list[tuple[int, bytes, int]]) -> list[tuple[int, bytes, int]]:
    """Shares in the order the contract requires: by kind, then id, ascending."""
    return sorted(shares, key=lambda share: (share[0], share[1]))
