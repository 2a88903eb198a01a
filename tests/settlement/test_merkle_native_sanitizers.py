"""The native tree build under AddressSanitizer and UndefinedBehaviorSanitizer.

`settlement/onchain/_merkle_native.c` reads Python objects, writes several large buffers from threads and indexes
a hash table and a tree by computed positions; this builds it with both sanitizers and, in a subprocess, builds
trees of every small size and a few multi-threaded ones (each checked against the Python build), feeds it bad
leaves of each kind and asks for proofs and lookups out of range; any sanitizer report fails the test.
"""

from pathlib import Path

import pytest

from tests.support.sanitizers import run_sanitized

root = Path(__file__).resolve().parents[2]
onchain = root / "settlement" / "onchain"

driver = """
import array, importlib.util, random, sys, types
# The packages without their __init__ (which would load web3 and pycryptodome, whose RTLD_DEEPBIND ASan refuses).
for name in ("settlement", "settlement.onchain"):
    package = types.ModuleType(name)
    package.__path__ = [name.replace(".", "/")]
    sys.modules[name] = package
spec = importlib.util.spec_from_file_location("settlement.onchain._merkle_native", sys.argv[1])
native = importlib.util.module_from_spec(spec)
spec.loader.exec_module(native)
sys.modules["settlement.onchain._merkle_native"] = native
from settlement.onchain import merkle
merkle._merkle_native = native

rng = random.Random(20261206)

def accounts(count):
    return list(dict.fromkeys("0x" + rng.randbytes(20).hex() for _ in range(count)))

def columns(leaves, amounts):
    text = "".join(leaves).encode()
    return array.array("q", range(0, 42 * len(leaves) + 1, 42)).tobytes(), text, array.array("q", amounts).tobytes()
def python_tree(leaves, amounts):
    merkle._merkle_native = None
    try:
        return merkle.MerkleTree.build(leaves, amounts)
    finally:
        merkle._merkle_native = native

for count in [*range(1, 40), 4096 * 2 + 1, 4096 * 3 + 2]:
    leaves = accounts(count)
    amounts = [rng.choice([0, 1, 2**64, 2**256 - 1, rng.getrandbits(100)]) for _ in leaves]
    expected = python_tree(leaves, amounts)._tree_bytes
    for keccak in (0, 1, 2):  # portable, AVX2, AVX-512VL (each where the CPU has it)
        for threads in (1, 3):
            built = native.build(leaves, amounts, threads, rng.getrandbits(64), keccak)
            assert built[0] == expected
    small = [rng.getrandbits(63) for _ in leaves]
    offsets, text, amounts_64 = columns(leaves, small)
    assert native.build_columns(offsets, text, amounts_64, 3, 5, 2)[0] == python_tree(leaves, small)._tree_bytes
    tree = merkle.MerkleTree.build(leaves, amounts)
    for account in leaves[:50]:
        tree.proof(account), tree.proof_hex(account)
    index = built[3]
    assert index.get(bytes(20)) is None
    for node in (-1, 2 * count - 1, 2**40):
        try:
            native.proof(tree._tree_bytes, node, True)
            raise SystemExit(f"proof({node}) of {count} leaves did not raise")
        except ValueError:
            pass

bad = ["0x" + "1" * 39, "0x" + "g" * 40, "0X" + "1" * 40, "0x" + "1" * 39 + "\u00e9", 5, None, b"1" * 42, "x" * 42]
for _ in range(300):
    leaves = accounts(rng.randrange(1, 30))
    amounts = [rng.getrandbits(64) for _ in leaves]
    at = rng.randrange(len(leaves))
    kind = rng.randrange(4)
    if kind == 0:
        leaves[at] = rng.choice(bad)
    elif kind == 1:
        amounts[at] = rng.choice([-1, 2**256, 1.0, True, "1", None, -(2**300)])
    elif kind == 2 and len(leaves) > 1:
        leaves[at] = leaves[rng.randrange(len(leaves))].upper().replace("0X", "0x")
    else:
        leaves[at] = leaves[at][:2] + leaves[at][2:].swapcase()[:20] + leaves[at][22:]
    try:
        native.build(leaves, amounts, rng.choice([1, 2]), 1, rng.choice([0, 1, 2]))
    except native.LeafError:
        pass
for _ in range(300):
    leaves = accounts(rng.randrange(1, 30))
    offsets, text, amounts_64 = columns(leaves, [rng.getrandbits(63) for _ in leaves])
    text, offsets, amounts_64 = bytearray(text), bytearray(offsets), bytearray(amounts_64)
    kind = rng.randrange(4)
    if kind == 0:
        text[rng.randrange(len(text))] = rng.randrange(256)
    elif kind == 1:
        offsets[rng.randrange(len(offsets))] = rng.randrange(256)
    elif kind == 2:
        amounts_64[rng.randrange(len(amounts_64))] = rng.randrange(256)
    else:
        text = text[: rng.randrange(len(text))]
    try:
        native.build_columns(bytes(offsets), bytes(text), bytes(amounts_64), rng.choice([1, 2]), 1, 2)
    except (native.LeafError, ValueError):
        pass
print("sanitized run clean")
"""


@pytest.mark.slow
def test_the_tree_build_is_clean_under_address_and_undefined_behavior_sanitizers(tmp_path: Path) -> None:
    """Pins memory safety of the native tree build: every small size, several threads, each bad leaf kind,
    out-of-range proofs and lookups, under both sanitizers, with the trees equal to the Python build's."""
    names = ("_merkle_native.c", "_keccak_avx2.c", "_keccak_avx512.c", "_keccak_scalar.c")
    sources = [onchain / name for name in names]
    run_sanitized(sources, "_merkle_native", driver, tmp_path)
