"""`MerkleTree.build` never forks while other threads run, and waits for a forked child only so long."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import duckdb
import polars as pl
import pytest

from settlement import merkle
from settlement.merkle import MerkleTree
from tests.conftest import repo_root
from tests.settlement.test_merkle import random_accounts


def test_build_does_not_fork_while_duckdb_and_polars_pools_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in `settle`: DuckDB and polars have run (their thread pools are up); a tree past `fork_leaves_min` is
    hashed in this process (a fork would copy locks those threads hold) and is the same tree."""
    duckdb.sql("SELECT sum(range) FROM range(1000000)").fetchall()
    pl.DataFrame({"a": list(range(100_000))}).group_by("a").len()
    assert len(os.listdir("/proc/self/task")) > 1
    monkeypatch.setattr(merkle, "fork_leaves_min", 2_000)  # small and fast, still past the bound
    accounts = random_accounts(2_000, seed=8)
    amounts = list(range(len(accounts)))

    def no_fork() -> int:
        raise AssertionError("os.fork called while other threads run")

    monkeypatch.setattr(os, "fork", no_fork)
    tree = MerkleTree.build(accounts, amounts)
    monkeypatch.setattr(merkle, "fork_leaves_min", len(accounts) + 1)
    assert tree.root == MerkleTree.build(accounts, amounts).root


_stuck_child = textwrap.dedent(
    """
    import os, sys, time
    from settlement import merkle
    from tests.settlement.test_merkle import random_accounts

    parent = os.getpid()
    checksum_bodies = merkle._checksum_bodies

    def stuck_in_the_child(given):
        if os.getpid() != parent:
            time.sleep(600)  # a child that never finishes (a lock copied mid-use, a stopped process)
        return checksum_bodies(given)

    merkle._checksum_bodies = stuck_in_the_child
    merkle._other_threads_running = lambda: False
    merkle.fork_wait_s_max = 1.0
    merkle.fork_leaves_min = 2_000
    accounts = random_accounts(2_000, seed=9)
    started = time.monotonic()
    tree = merkle.MerkleTree.build(accounts, list(range(len(accounts))))
    merkle.fork_leaves_min = len(accounts) + 1
    assert tree.root == merkle.MerkleTree.build(accounts, list(range(len(accounts)))).root
    print(f"built in {time.monotonic() - started:.1f} s")
    """
)


def test_a_stuck_forked_child_is_killed_at_the_bound_and_the_tree_is_still_built() -> None:
    """A forked child that never exits: `build` kills it after `fork_wait_s_max`, warns, hashes its share itself."""
    result = subprocess.run(
        [sys.executable, "-c", _stuck_child], capture_output=True, text=True, cwd=repo_root, timeout=60
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "built in" in result.stdout
    assert "did not finish within 1 s" in result.stderr
