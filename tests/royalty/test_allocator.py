"""Polars' allocator keeps the pages a batch command frees (royalty.allocator): set by `royalty`'s import for every
command but the ingest service, never over an operator's own setting, and read by polars' allocator when it loads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from royalty.allocator import batch_allocator_settings, keep_freed_pages, polars_allocator_variable
from tests.support.anvil import REPO_ROOT


@pytest.fixture
def unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(polars_allocator_variable, raising=False)


def test_a_batch_command_keeps_freed_pages(unset: None) -> None:
    keep_freed_pages(["royalty", "close-epoch", "--lake", "lake"])
    assert os.environ[polars_allocator_variable] == batch_allocator_settings


def test_the_ingest_service_gives_pages_back_as_polars_does(unset: None) -> None:
    keep_freed_pages(["royalty", "ingest", "--lake", "lake"])
    assert polars_allocator_variable not in os.environ


def test_an_operators_own_setting_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(polars_allocator_variable, "dirty_decay_ms:1000")
    keep_freed_pages(["royalty", "settle"])
    assert os.environ[polars_allocator_variable] == "dirty_decay_ms:1000"


def test_the_royalty_package_sets_it_before_polars_loads() -> None:
    """In a fresh `royalty` process the setting is in the environment by the time polars is imported, after polars'
    own defaults (which it puts first: later options override earlier ones)."""
    script = (
        "import sys; sys.argv = ['royalty', 'close-epoch']; import royalty, os; "
        f"assert 'polars' not in sys.modules; import polars; print(repr(os.environ.get({polars_allocator_variable!r})))"
    )
    env = {k: v for k, v in os.environ.items() if k != polars_allocator_variable}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env={**env, "PYTHONPATH": str(REPO_ROOT)}
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1].endswith("," + batch_allocator_settings + "'"), done.stdout
