"""Bulk hashing for the payout tree: EIP-55 checksums and leaf hashes over whole columns.

It imports nothing but `sha3`, so that it also runs as a script: the helper process in which
`settlement.onchain.merkle` hashes a share of a large tree on the second core. The helper is a fresh interpreter
(`python -I settlement/onchain/tree_hashing.py`), not a fork: a forked copy of a process running DuckDB, polars
or pyarrow threads would inherit their locks in whatever state they were, and could wait on one forever.

Protocol (stdin, then stdout, little-endian counts): in, `accounts_count`, `leaves_count` (u64 each), the
`accounts_count` 40-hex-digit account bodies, then for each leaf its 20-byte account and its amount as 32
big-endian bytes; out, the checksummed bodies (40 bytes each), then the leaf hashes (32 bytes each).
"""

import struct
import sys
from collections.abc import Sequence

from sha3 import keccak_256

account_bytes = 20
word_bytes = 32
header = struct.Struct("<QQ")
_address_padding = bytes(word_bytes - account_bytes)

# For the EIP-55 checksum in bulk: a hex digit of the address's keccak that is >= 8 upper-cases the
# letter at the same position; 0x20 is the ASCII bit that separates "a" from "A".
_case_bit_if_high_nibble = bytes(0x20 if chr(c) in "89abcdef" else 0 for c in range(256))
_case_bit_if_letter = bytes(0x20 if chr(c) in "abcdefABCDEF" else 0 for c in range(256))


def checksum_bodies(given: bytes) -> bytes:
    """EIP-55 for many addresses at once: 40 hex characters each in, checksummed characters out."""
    lower = given.lower()
    k = keccak_256
    digests = b"".join([k(lower[i : i + 40]).digest()[:20] for i in range(0, len(lower), 40)])
    case_bits = int.from_bytes(digests.hex().encode("ascii").translate(_case_bit_if_high_nibble), "big")
    letter_bits = int.from_bytes(lower.translate(_case_bit_if_letter), "big")
    return (int.from_bytes(lower, "big") ^ (case_bits & letter_bits)).to_bytes(len(lower), "big")


def leaf_hashes(accounts_raw: Sequence[bytes], amounts_units: Sequence[int]) -> list[bytes]:
    """`keccak256(keccak256(abi.encode(account, amount)))` of each leaf."""
    k = keccak_256
    pad = _address_padding
    return [
        k(k(pad + a + m.to_bytes(32, "big")).digest()).digest()
        for a, m in zip(accounts_raw, amounts_units, strict=True)
    ]


def leaf_hashes_of_words(accounts_raw: bytes, amounts_words: bytes) -> bytes:
    """`leaf_hashes` over joined 20-byte accounts and 32-byte big-endian amounts; the hashes joined."""
    k = keccak_256
    pad = _address_padding
    count = len(accounts_raw) // account_bytes
    return b"".join(
        [
            k(
                k(
                    pad
                    + accounts_raw[i * account_bytes : (i + 1) * account_bytes]
                    + amounts_words[i * word_bytes : (i + 1) * word_bytes]
                ).digest()
            ).digest()
            for i in range(count)
        ]
    )


def request(given: bytes, accounts_raw: bytes, amounts_units: Sequence[int]) -> bytes:
    """The helper's input for checksumming `given` and hashing the leaves of `accounts_raw` / `amounts_units`."""
    words = b"".join([m.to_bytes(word_bytes, "big") for m in amounts_units])
    return header.pack(len(given) // 40, len(amounts_units)) + given + accounts_raw + words


def _serve() -> None:
    data = sys.stdin.buffer.read()
    accounts_count, leaves_count = header.unpack_from(data)
    given_end = header.size + 40 * accounts_count
    raw_end = given_end + account_bytes * leaves_count
    out = sys.stdout.buffer
    out.write(checksum_bodies(data[header.size : given_end]))
    out.write(leaf_hashes_of_words(data[given_end:raw_end], data[raw_end : raw_end + word_bytes * leaves_count]))
    out.flush()


if __name__ == "__main__":
    _serve()
