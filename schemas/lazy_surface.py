"""A package's public names, imported on first use (PEP 562), so a command loads only what it touches.

`royalty verify` needs the settlement's table declarations, not web3 and eth_account (about 1.5 s of
imports, most of it py_ecc's pairing tables); a package `__init__` that imported its whole surface made
every command pay for it. Ten lines, so no dependency (scientific-python's `lazy_loader` does the same).
"""

import importlib
from collections.abc import Callable, Mapping


def lazy_surface(
    package: str, names_by_module: Mapping[str, list[str]]
) -> tuple[Callable[[str], object], Callable[[], list[str]], list[str]]:
    """`__getattr__`, `__dir__` and `__all__` for `package`, whose names live in the modules given."""
    module_of = {name: module for module, names in names_by_module.items() for name in names}

    def __getattr__(name: str) -> object:
        if name not in module_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(module_of[name])
        value = module if module.__name__ == f"{package}.{name}" else getattr(module, name)
        vars(importlib.import_module(package))[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(module_of)

    return __getattr__, __dir__, sorted(module_of)
