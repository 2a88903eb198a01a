"""Native accelerators, built as C extensions by `pip install`.

Each is optional: where no C compiler is available the install still succeeds and the code
falls back to its pure-Python path (slower, same results). CI requires them to be built
(`tests/test_native_built.py`).
"""

from setuptools import Extension, setup

native_compile_args = ["-O3", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter"]

setup(
    ext_modules=[
        Extension(
            "schemas._fastjson",
            sources=["schemas/_fastjson.c"],
            extra_compile_args=native_compile_args,
            optional=True,
        ),
        # The payout Merkle tree: vendored Keccak (settlement/onchain/vendor/README.md), threads without the GIL.
        Extension(
            "settlement.onchain._merkle_native",
            sources=[
                "settlement/onchain/_merkle_native.c",
                "settlement/onchain/_keccak_avx2.c",
                "settlement/onchain/_keccak_avx512.c",
                "settlement/onchain/_keccak_scalar.c",
            ],
            depends=[
                "settlement/onchain/_keccak_batch.h",
                "settlement/onchain/_keccak_x4.h",
                "settlement/onchain/vendor/xkcp/KeccakP-1600-times4-SIMD256.c",
                "settlement/onchain/vendor/xkcp-avx512/KeccakP-1600-times4-SIMD512.c",
                "settlement/onchain/vendor/pqclean/fips202.c",
            ],
            extra_compile_args=native_compile_args,
            extra_link_args=["-pthread"],
            optional=True,
        ),
        # The payer receipts' group sum trees: SHA-256 from OpenSSL's libcrypto (the one Python's hashlib uses).
        Extension(
            "settlement.reports._sum_tree_native",
            sources=["settlement/reports/_sum_tree_native.c"],
            extra_compile_args=native_compile_args,
            libraries=["crypto"],
            optional=True,
        ),
        Extension(
            "ingest._kafka_records",
            sources=["ingest/_kafka_records.c"],
            extra_compile_args=native_compile_args,
            optional=True,
        ),
    ],
)
