"""Royalties to token holders on a real anvil (issue 17): `sync-holders` indexes an OpenZeppelin ERC-20's
Transfer logs, balances at a block match `balanceOf`, a token whose balances move without a Transfer is
refused, a reorganisation below the cursor stops the next sync, and an epoch paying `holders:<token>` pays
each holder by its time-weighted balance over the epoch's blocks, claimed with the normal claim.

One anvil for the module, its genesis a day back (metered events sit in the chain's past); each test deploys
its own token and uses its own ledger.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner
from web3.contract import Contract

from ledger import Ledger
from royalty.cli import app
from settlement.holders import balances_at
from settlement.onchain.contract_artifacts import load_artifact, token_artifact
from tests.support.anvil import Anvil, anvil_binary
from tests.support.settle_runs import royalty

GENESIS_AGO_S = 86_400
runner = CliRunner()


@pytest.fixture(scope="module")
def anvil(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Anvil]:
    """This module's anvil, its genesis a day back (its clock runs from there)."""
    genesis = int(time.time()) - GENESIS_AGO_S
    node = Anvil(anvil_binary(), tmp_path_factory.mktemp("anvil") / "anvil.log", ("--timestamp", str(genesis)))
    try:
        yield node
    finally:
        node.stop()


def _send(node: Anvil, call, sender: str) -> dict:
    receipt = node.w3.eth.wait_for_transaction_receipt(call.transact({"from": sender}))
    assert receipt["status"] == 1
    return receipt


def _deploy(node: Anvil, name: str = "TestToken") -> Contract:
    """An OpenZeppelin ERC-20 (TestToken: mintable by account 0; FeeToken: keeps 1% of each transfer)."""
    build = token_artifact() if name == "TestToken" else load_artifact(name)
    factory = node.w3.eth.contract(abi=build.abi, bytecode=build.bytecode)
    admin = node.w3.eth.accounts[0]
    args = ("Model Share", "MSH", 18, admin) if name == "TestToken" else ()
    receipt = _send(node, factory.constructor(*args), admin)
    return node.w3.eth.contract(address=receipt["contractAddress"], abi=build.abi)


def _sync(lake: Path, node: Anvil, token: str, *extra: str) -> dict:
    return royalty("sync-holders", "--lake", str(lake), "--rpc-url", node.url, "--token", token, *extra)


def _new_lake(lake: Path) -> None:
    with Ledger.open(str(lake)):
        pass


def test_sync_indexes_transfers_once_and_balances_at_each_block_match_balance_of(
    anvil: Anvil, tmp_path: Path
) -> None:
    """Mints and transfers over several blocks, synced in two runs with a 2-block span: every balance the
    ledger computes at every block equals the token's balanceOf there; a rerun stores nothing."""
    lake = tmp_path / "lake"
    _new_lake(lake)
    token = _deploy(anvil)
    admin, a, b, c = anvil.w3.eth.accounts[:4]
    _send(anvil, token.functions.mint(a, 10**21), admin)
    _send(anvil, token.functions.mint(b, 5 * 10**20), admin)
    _send(anvil, token.functions.transfer(c, 3 * 10**20), a)
    first = _sync(lake, anvil, token.address)
    _send(anvil, token.functions.transfer(a, 10**20), b)
    _send(anvil, token.functions.transfer(b, 2 * 10**20), c)
    second = _sync(lake, anvil, token.address)
    assert second["from_block"] == first["to_block"] + 1
    assert first["transfers_added"] + second["transfers_added"] == 5
    assert _sync(lake, anvil, token.address)["transfers_added"] == 0
    with Ledger.open_read_only(str(lake)) as ledger:
        for block in range(first["from_block"], second["to_block"] + 1):
            indexed = balances_at(ledger.connection, anvil.w3.eth.chain_id, token.address, block)
            for holder in (a, b, c):
                assert indexed.get(holder, 0) == token.functions.balanceOf(holder).call(block_identifier=block)


def test_a_token_whose_balances_move_without_a_transfer_is_refused_naming_the_holder(
    anvil: Anvil, tmp_path: Path
) -> None:
    """A rebase (a balance changed in storage, no Transfer log, as rebasing tokens do) between two syncs: the
    next sync stops naming the holder and both balances, and stores nothing of that range."""
    lake = tmp_path / "lake"
    _new_lake(lake)
    token = _deploy(anvil)
    admin, a, b = anvil.w3.eth.accounts[:3]
    _send(anvil, token.functions.mint(a, 1_000), admin)
    _send(anvil, token.functions.mint(b, 1_000), admin)
    synced = _sync(lake, anvil, token.address)
    # OpenZeppelin ERC20 v5 keeps `_balances` at slot 0: the balance of `a` is at keccak(a . 0).
    from eth_utils import keccak

    slot = keccak(bytes.fromhex(a[2:]).rjust(32, b"\0") + (0).to_bytes(32, "big"))
    anvil.rpc("anvil_setStorageAt", [token.address, "0x" + slot.hex(), "0x" + (1_100).to_bytes(32, "big").hex()])
    _send(anvil, token.functions.transfer(b, 10), a)
    result = runner.invoke(app, ["sync-holders", "--lake", str(lake), "--rpc-url", anvil.url, "--token", token.address])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert f"holder {a} has 1090 units" in message and "990 by its Transfer logs" in message
    assert "cannot be a holder token" in message
    with Ledger.open_read_only(str(lake)) as ledger:
        (to_block,) = ledger.connection.execute("SELECT max(to_block) FROM lake.main.holder_sync").fetchone()
    assert to_block == synced["to_block"]


def test_a_reorganisation_below_the_cursor_stops_the_next_sync(anvil: Anvil, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    _new_lake(lake)
    token = _deploy(anvil)
    admin, a = anvil.w3.eth.accounts[:2]
    snapshot = anvil.rpc("evm_snapshot", [])
    _send(anvil, token.functions.mint(a, 1_000), admin)
    synced = _sync(lake, anvil, token.address)
    anvil.rpc("evm_revert", [snapshot])
    for _ in range(3):
        anvil.rpc("evm_mine", [])
    result = runner.invoke(app, ["sync-holders", "--lake", str(lake), "--rpc-url", anvil.url, "--token", token.address])
    assert result.exit_code != 0
    message = " ".join(result.output.split())
    assert f"block {synced['to_block']} was 0x" in message and "token transfers" in message
