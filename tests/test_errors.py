"""One root error: every exception class the packages define derives from `schemas.errors.RoyaltyError`.

schemas is the package every other one imports, so its `errors` module is the common one; each package's
own errors module (`ledger/errors.py`, `ingest/errors.py`, `settlement/exceptions.py` and its sub-packages',
`royalty/exceptions.py`) derives its root from it, and the CLI reports any `RoyaltyError` with its exit code.
"""

import importlib
import inspect
import pkgutil

from schemas.errors import RoyaltyError

packages = ("schemas", "ledger", "ingest", "settlement", "royalty")
# Internal signals that never leave their module, each with its reason.
internal = {
    # The native plan's "this constraint does not fit the C decoder": caught where raised, the type stays on msgspec.
    ("schemas.native_plan", "NotNative"),
    # Raised by the C extension for a malformed leaf; merkle.py catches it and raises the Python build's error.
    ("settlement.onchain._merkle_native", "LeafError"),
}


def _exception_classes() -> list[tuple[str, str, type]]:
    found = []
    for package in packages:
        for info in pkgutil.walk_packages(importlib.import_module(package).__path__, package + "."):
            module = importlib.import_module(info.name)
            for name, value in vars(module).items():
                if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == module.__name__:
                    found.append((module.__name__, name, value))
    return found


def test_every_error_the_packages_define_derives_from_the_root_error() -> None:
    classes = _exception_classes()
    assert len(classes) > 20  # the walk found the packages' errors
    outside = [(module, name) for module, name, cls in classes if not issubclass(cls, RoyaltyError)]
    assert set(outside) <= internal, f"derive these from RoyaltyError (or a package's root error): {outside}"
