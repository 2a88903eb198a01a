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


@pytest.fixture
def lake_dir(tmp_path: Path) -> Path:
    """A fresh folder for an embedded ledger."""
    return tmp_path / "lake"


def royalty_command(*args: str) -> list[str]:
    """The `royalty` CLI as a subprocess command line, independent of PATH."""
    return [sys.executable, "-m", "royalty.cli", *args]
