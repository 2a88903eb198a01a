"""Shared test configuration: hypothesis profiles and fixtures for real components."""

import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
settings.register_profile(
    "ci",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    derandomize=True,
)
settings.load_profile("ci" if os.environ.get("CI") == "true" else "default")

repo_root = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _settlement_declared_with_the_ledger() -> None:
    """The settlement's tables and views, declared once for the session as every entry point does (importing a
    settlement module declares nothing: tests/settlement/test_registration.py)."""
    from settlement.use_cases.ledger_setup import register_with_ledger

    register_with_ledger()


@pytest.fixture
def lake_dir(tmp_path: Path) -> Path:
    """A fresh folder for an embedded ledger."""
    return tmp_path / "lake"


def royalty_command(*args: str) -> list[str]:
    """The `royalty` CLI as a subprocess command line, independent of PATH."""
    return [sys.executable, "-m", "royalty.cli", *args]


# CI runs the whole suite on Python 3.11 and, on 3.12 and 3.13, the paths .ci/run lists with
# `-m "not slow and not integration"`. A test is `integration` when it needs a component started for it (a
# Kafka broker, PostgreSQL, anvil, node's OpenZeppelin, Chromium) or sits in a folder of such tests. A
# component fetched with `request.getfixturevalue` is not seen here: request it by argument instead.
integration_fixtures = frozenset({"kafka_broker", "postgres_server", "anvil", "oz_merkle", "seaweedfs"})
integration_folders = frozenset({"integration", "faults", "soak", "contracts"})
# Tests that measure a rate or memory over time run alone (`serial`), after the parallel part (scripts/run-tests).
serial_folders = frozenset({"soak"})
tests_root = Path(__file__).resolve().parent


nightly = os.environ.get("ROYALTY_NIGHTLY") == "1"
skip_nightly = pytest.mark.skip(reason="a nightly depth: run with ROYALTY_NIGHTLY=1 (CI runs the shorter depth)")


# CI's fast tests on Python 3.12 and 3.13 (.ci/run) check what depends on the interpreter; searching deep is
# the 3.11 suite's job, so there the heaviest properties draw a fifth of their examples (`examples`).
other_python = os.environ.get("ROYALTY_CI_OTHER_PYTHON") == "1"


def examples(count: int) -> int:
    """A property's example count: `count`, or a fifth of it (at least 10) in CI's runs on the other Pythons."""
    return max(10, count // 5) if other_python else count


def depth(ci: int, nightly_depth: int) -> int:
    """How deep a soak, fuzz or scale test goes: `ci` in CI (its 25-minute budget), `nightly_depth` with
    ROYALTY_NIGHTLY=1 (docs/guarantees.md, "Test depths")."""
    return nightly_depth if nightly else ci


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if not nightly and item.get_closest_marker("nightly") is not None:
            item.add_marker(skip_nightly)
        folder = item.path.relative_to(tests_root).parts[0]
        if folder in integration_folders or _uses_a_component(item):
            item.add_marker(pytest.mark.integration)
        if folder in serial_folders:
            item.add_marker(pytest.mark.serial)


def _uses_a_component(item: pytest.Item) -> bool:
    """An integration fixture among its fixtures, or a catalog fixture parametrized to `postgres`."""
    if integration_fixtures.intersection(getattr(item, "fixturenames", ())):
        return True
    callspec = getattr(item, "callspec", None)
    return callspec is not None and any(isinstance(v, str) and v == "postgres" for v in callspec.params.values())
