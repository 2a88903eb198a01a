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
        Extension(
            "ingest._kafka_records",
            sources=["ingest/_kafka_records.c"],
            extra_compile_args=native_compile_args,
            optional=True,
        ),
    ],
)
