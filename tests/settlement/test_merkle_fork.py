"""`MerkleTree.build` hashes a large tree's share in a fresh helper process, never a fork, and waits for it
only so long."""

from __future__ import annotations

import logging
import os
import sys

import duckdb
import polars as pl
import pytest

from settlement.onchain import merkle
from settlement.onchain.merkle import MerkleTree
from tests.settlement.test_merkle import random_accounts

leaves = 2_000  # small and fast; the tests lower `helper_leaves_min` below it


def _inline_root(accounts: list[str], amounts: list[int], monkeypatch: pytest.MonkeyPatch) -> bytes:
    monkeypatch.setattr(merkle, "helper_leaves_min", len(accounts) + 1)
    return MerkleTree.build(accounts, amounts).root


def test_build_never_forks_while_duckdb_and_polars_pools_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in `settle`: DuckDB and polars have run (their thread pools are up); the tree's share for the second
    core goes to a new interpreter (fork + exec), never to a forked copy of this threaded process."""
    duckdb.sql("SELECT sum(range) FROM range(1000000)").fetchall()
    pl.DataFrame({"a": list(range(100_000))}).group_by("a").len()
    assert len(os.listdir("/proc/self/task")) > 1
    accounts, amounts = random_accounts(leaves, seed=8), list(range(leaves))
    monkeypatch.setattr(merkle, "helper_leaves_min", leaves)

    def no_fork() -> int:
        raise AssertionError("os.fork called while other threads run")

    monkeypatch.setattr(os, "fork", no_fork)
    started: list[list[str]] = []
    popen = merkle.subprocess.Popen

    def recording_popen(command: list[str], **kwargs: object) -> object:
        started.append(command)
        return popen(command, **kwargs)

    monkeypatch.setattr(merkle.subprocess, "Popen", recording_popen)
    tree = MerkleTree.build(accounts, amounts)
    assert started == [[sys.executable, "-I", merkle.tree_hashing.__file__]]
    assert tree.root == _inline_root(accounts, amounts, monkeypatch)


def test_a_stuck_helper_is_killed_at_the_bound_and_the_tree_is_still_built(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A helper that never answers: `build` kills it after `helper_wait_s_max`, logs it, hashes its share itself."""
    accounts, amounts = random_accounts(leaves, seed=9), list(range(leaves))
    monkeypatch.setattr(merkle, "helper_leaves_min", leaves)
    monkeypatch.setattr(merkle, "helper_wait_s_max", 1.0)
    monkeypatch.setattr(merkle, "_helper_command", [sys.executable, "-c", "import time; time.sleep(600)"])
    with caplog.at_level(logging.WARNING, logger="royalty.settlement"):
        tree = MerkleTree.build(accounts, amounts)
    assert "did not finish within 1 s" in caplog.text
    monkeypatch.undo()
    assert tree.root == _inline_root(accounts, amounts, monkeypatch)
