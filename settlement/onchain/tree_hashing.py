"""Bulk hashing for the payout tree's Python build: EIP-55 checksums and leaf hashes over whole columns.

`settlement.onchain.merkle` uses it where its native build (`settlement.onchain._merkle_native`) is absent, and
for single accounts (a proof's lookup, an error's expected checksum).
"""

from collections.abc import Sequence

from sha3 import keccak_256

account_bytes = 20
word_bytes = 32
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
