"""CI builds every native accelerator: a missing compiler must fail CI, not silently test the fallbacks."""

import importlib
import os
import platform
from pathlib import Path

import pytest


@pytest.mark.skipif(not os.environ.get("CI"), reason="only CI requires the C extensions to be built")
def test_kafka_records_extension_is_built_in_ci() -> None:
    """Pins the native Kafka record decoder in CI: `ingest._kafka_records` imports and is the decoder in use."""
    importlib.import_module("ingest._kafka_records")
    from ingest import native_records

    assert native_records.decoder_name() == "native"


@pytest.mark.skipif(not os.environ.get("CI"), reason="only CI requires the C extensions to be built")
def test_merkle_extension_is_built_in_ci() -> None:
    """Pins the native payout-tree build in CI: `settlement.onchain._merkle_native` imports, `MerkleTree.build` uses
    it, and on this x86-64 machine it hashes with XKCP's AVX-512VL (else AVX2) lanes."""
    native = importlib.import_module("settlement.onchain._merkle_native")
    from settlement.onchain import merkle

    assert merkle._merkle_native is native
    flags = set(Path("/proc/cpuinfo").read_text().split()) if platform.machine() == "x86_64" else set()
    if {"avx512f", "avx512vl"} <= flags:
        assert native.implementation() == "xkcp-avx512-x4"
    elif "avx2" in flags:
        assert native.implementation() == "xkcp-avx2-x4"


@pytest.mark.skipif(not os.environ.get("CI"), reason="only CI requires the C extensions to be built")
def test_sum_tree_extension_is_built_in_ci() -> None:
    """Pins the native payer-receipt sum trees in CI: `settlement.reports._sum_tree_native` imports (it links
    OpenSSL's libcrypto) and `sum_tree.group_roots` / `root_of` use it."""
    native = importlib.import_module("settlement.reports._sum_tree_native")
    from settlement.reports import sum_tree

    assert sum_tree._sum_tree_native is native
