"""Royalties to token holders on a real anvil (issue 17): `sync-holders` indexes an OpenZeppelin ERC-20's
Transfer logs, balances at a block match `balanceOf`, a token whose balances move without a Transfer is
refused, a reorganisation below the cursor stops the next sync, and an epoch paying `holders:<token>` pays
each holder by its time-weighted balance over the epoch's blocks, claimed with the normal claim.

One anvil for the module, its genesis a day back (metered events sit in the chain's past); each test deploys
its own token and uses its own ledger.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner
from web3.contract import Contract

from ledger import Ledger, define_views, recorder, run_query
from royalty.cli import app
from settlement import holders
from settlement.engine.allocation import allocate_by_weight
from settlement.holders import balances_at
from settlement.onchain.contract_artifacts import load_artifact, token_artifact
from settlement.reports.audit import AuditDisagreement, audit_bundle
from tests.ledger.helpers import batch_of
from tests.support.anvil import Anvil, anvil_binary
from tests.support.settle_runs import SETTLER_KEY, claim_with_proof_output, deploy, royalty

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


@pytest.mark.parametrize("checkpointed", [False, True], ids=["no-checkpoint", "checkpoint-each-range"])
def test_sync_indexes_transfers_once_and_balances_at_each_block_match_balance_of(
    anvil: Anvil, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, checkpointed: bool
) -> None:
    """Mints and transfers over several blocks, synced in two runs with a 2-block span: every balance the
    ledger computes at every block equals the token's balanceOf there; a rerun stores nothing. With a balance
    checkpoint due after a single transfer, the first run stores one (at its last block) and the balances at
    every block, before and after it, are the same."""
    if checkpointed:
        monkeypatch.setattr(holders, "holder_checkpoint_transfers_min", 1)
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
        stored = set()
        if holders.holder_checkpoint_table in recorder.existing_tables(ledger.connection):
            stored = {block for (block,) in ledger.connection.execute(
                f"SELECT DISTINCT block_number FROM {recorder.table(holders.holder_checkpoint_table)}").fetchall()}
        # The second run's 2 transfers are fewer than the first checkpoint's 4 rows (a, b, c, the zero address).
        assert stored == ({first["to_block"]} if checkpointed else set())
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


def _event(event_type: str, event_id: str, data: dict, at: datetime, source: str = "//registry") -> bytes:
    envelope = {"specversion": "1.0", "id": event_id, "source": source, "type": event_type}
    return json.dumps({**envelope, "time": at.isoformat().replace("+00:00", "Z"), "data": data}).encode()


def _registry(token: str, alice: str, at: datetime) -> list[bytes]:
    policy = {
        "model_id": "m",
        "effective_from": at.isoformat().replace("+00:00", "Z"),
        "compute_share_ppm": 0,
        "shares": [
            {"recipient": "alice", "share_ppm": 400_000},
            {"recipient": f"holders:{token}", "share_ppm": 600_000},
        ],
    }
    return [
        _event("ai.contributor.registered.v1", "reg-alice", {"contributor_id": "alice", "payout_address": alice}, at),
        _event("ai.model.registered.v1", "reg-m", {"model_id": "m", "parents": []}, at),
        _event("ai.split-policy.set.v1", "pol-m", policy, at),
    ]


def _metered(first: int, count: int, at: datetime) -> list[bytes]:
    data = {
        "model_id": "m", "payer": "org-1", "compute_provider": "gpu-1", "input_tokens": 1, "output_tokens": 1,
        "fee_micros": 1_000_003, "asset": "USDC",
    }  # fmt: skip
    return [
        _event("ai.inference.metered.v1", f"ev-{i}", {**data, "request_id": f"r-{i}"}, at, "//gateway")
        for i in range(first, first + count)
    ]


class _Feed:
    def __init__(self, lake: Path) -> None:
        self.lake, self.offset = lake, 0

    def send(self, values: list[bytes]) -> None:
        with Ledger.open(str(self.lake)) as ledger:
            ledger.append(*batch_of(values, first_offset=self.offset))
        self.offset += len(values)


def _close(lake: Path, env: dict[str, str] | None = None) -> CliRunner:
    result = runner.invoke(app, ["close-epoch", "--lake", str(lake)], env=env or {})
    return result


def _payables(lake: Path, epoch: int) -> dict[str, int]:
    with Ledger.open_read_only(str(lake)) as ledger:
        rows = ledger.connection.execute(
            "SELECT recipient, amount_micros FROM lake.main.settlement_payable WHERE epoch = ?", [epoch]
        ).fetchall()
    return dict(rows)


def _oracle_weights(token: Contract, holders: list[str], first: int, last: int) -> dict[str, int]:
    """Each holder's balance summed over blocks first..last, asked of the token itself block by block."""
    blocks = range(first, last + 1)
    return {h: sum(token.functions.balanceOf(h).call(block_identifier=b) for b in blocks) for h in holders}


def _mine(node: Anvil, blocks: int) -> None:
    """Mine `blocks` blocks 12 s apart (the chain's clock moves past the metered events' times)."""
    node.rpc("anvil_mine", [hex(blocks), hex(12)])


def test_an_epoch_pays_holders_by_time_weighted_balance_and_they_claim_with_the_normal_claim(
    anvil: Anvil, tmp_path: Path
) -> None:
    """A policy gives 60% of model m to `holders:<token>`. Holders mint, transfer mid-epoch and sell between
    epochs; one is excluded by setting. Each holder's payable is its exact largest-remainder part of the take
    over the balances the token reports block by block, within one unit of the exact fraction; a holder who
    sold before epoch 2's range gets nothing in epoch 2; settled on-chain, a holder claims its amount with the
    ordinary claim; a close while the holder sync is behind refuses with exit 75."""
    lake = tmp_path / "lake"
    token = _deploy(anvil)
    admin, h1, h2, h3, h4, alice = anvil.w3.eth.accounts[:6]
    _send(anvil, token.functions.mint(h1, 1_000 * 10**18), admin)
    _send(anvil, token.functions.mint(h2, 3_000 * 10**18), admin)
    _send(anvil, token.functions.mint(h4, 5_000 * 10**18), admin)  # a treasury, excluded
    _mine(anvil, 5)
    _send(anvil, token.functions.transfer(h3, 400 * 10**18), h1)  # mid-epoch
    _mine(anvil, 5)
    at = datetime.fromtimestamp(anvil.w3.eth.get_block(1)["timestamp"], UTC)
    feed = _Feed(lake)
    feed.send(_registry(token.address, alice, at) + _metered(0, 20, at + timedelta(seconds=1)))
    env = {"ROYALTY_HOLDER_EXCLUDED": h4}

    behind = _close(lake, env)  # no holder sync yet
    assert behind.exit_code == 75, behind.output
    assert "Run `royalty sync-holders" in " ".join(behind.output.split())

    first_sync = _sync(lake, anvil, token.address)
    closed = _close(lake, env)
    assert closed.exit_code == 0, closed.output
    take = 20 * 1_000_003 * 600_000 // 1_000_000  # alice's 40% part is floor-exact here: 8,000,024
    weights = _oracle_weights(token, [h1, h2, h3], first_sync["from_block"], first_sync["to_block"])
    paid = _payables(lake, 1)
    assert h4 not in paid and f"holders:{token.address}" not in paid
    assert sum(paid[h] for h in (h1, h2, h3)) + paid["alice"] == 20 * 1_000_003
    assert sum(paid[h] for h in (h1, h2, h3)) == take
    whole = sum(weights.values())
    for holder, weight in weights.items():
        assert abs(paid[holder] * whole - take * weight) < whole  # within one unit of the exact fraction
    assert dict(allocate_by_weight(take, sorted(weights.items()))) == {h: paid[h] for h in weights}

    _send(anvil, token.functions.transfer(h2, 600 * 10**18), h1)  # h1 sells the rest before epoch 2's range
    _mine(anvil, 3)
    feed.send(_metered(20, 10, at + timedelta(seconds=2)))
    second_sync = _sync(lake, anvil, token.address)
    assert _close(lake, env).exit_code == 0
    paid_2 = _payables(lake, 2)
    assert h1 not in paid_2  # held nothing over epoch 2's blocks
    weights_2 = _oracle_weights(token, [h2, h3], first_sync["to_block"] + 1, second_sync["to_block"])
    take_2 = 10 * 1_000_003 * 600_000 // 1_000_000
    assert dict(allocate_by_weight(take_2, sorted(weights_2.items()))) == {h: paid_2[h] for h in (h2, h3)}
    with Ledger.open_read_only(str(lake)) as ledger:
        ranges = ledger.connection.execute(
            "SELECT epoch, from_block, to_block FROM lake.main.settlement_epoch_blocks ORDER BY epoch"
        ).fetchall()
    assert ranges == [
        (1, first_sync["from_block"], first_sync["to_block"]),
        (2, first_sync["to_block"] + 1, second_sync["to_block"]),
    ]
    with Ledger.open_read_only(str(lake)) as ledger:
        define_views(ledger)
        credited = run_query(
            ledger, "SELECT epoch, sum(credited_micros)::BIGINT AS total FROM holder_payables GROUP BY 1 ORDER BY 1"
        ).to_pylist()
        balances = run_query(
            ledger, "SELECT holder, weighted_units::VARCHAR AS w, excluded FROM holder_balances WHERE epoch = 1"
        ).to_pylist()
    assert credited == [{"epoch": 1, "total": take}, {"epoch": 2, "total": take_2}]
    assert {r["holder"]: int(r["w"]) for r in balances if not r["excluded"]} == weights
    assert {r["holder"] for r in balances if r["excluded"]} == {h4}

    deployed = deploy(anvil)
    settled = runner.invoke(
        app,
        ["settle", "--lake", str(lake), "--rpc-url", anvil.url, "--distributor", deployed["distributor"], "--json"],
        env={"ROYALTY_SETTLER_KEY": SETTLER_KEY},
    )
    assert settled.exit_code == 0, (settled.output, "".join(traceback.format_exception(settled.exception)))
    assert claim_with_proof_output(lake, anvil, h3, tmp_path) == paid[h3] + paid_2[h3]
    assert claim_with_proof_output(lake, anvil, h1, tmp_path) == paid[h1]


def test_buying_just_before_the_range_end_earns_only_the_blocks_held(anvil: Anvil, tmp_path: Path) -> None:
    """The buy-before-snapshot attack: a whale buys ten times the supply in the range's last block. A snapshot
    at that block would pay it 10/11 of the take; time-weighted it gets its one block's worth."""
    lake = tmp_path / "lake"
    token = _deploy(anvil)
    admin, holder, whale, alice = anvil.w3.eth.accounts[:4]
    _send(anvil, token.functions.mint(holder, 1_000), admin)
    _mine(anvil, 50)
    _send(anvil, token.functions.mint(whale, 10_000), admin)  # the range's last block (1 confirmation)
    at = datetime.fromtimestamp(anvil.w3.eth.get_block(1)["timestamp"], UTC)
    feed = _Feed(lake)
    feed.send(_registry(token.address, alice, at) + _metered(0, 10, at + timedelta(seconds=1)))
    synced = _sync(lake, anvil, token.address)
    assert _close(lake).exit_code == 0
    paid = _payables(lake, 1)
    take = 10 * 1_000_003 * 600_000 // 1_000_000
    weights = _oracle_weights(token, [holder, whale], synced["from_block"], synced["to_block"])
    assert weights[whale] == 10_000  # one block held
    assert paid[whale] == dict(allocate_by_weight(take, sorted(weights.items())))[whale]
    assert paid[whale] < take // 4 < take * 10 // 11  # a snapshot at the range's end would pay it 10/11


def test_onchain_mode_pays_a_registry_holders_recipient_and_its_v3_bundle_audits_against_the_chain(
    anvil: Anvil, tmp_path: Path
) -> None:
    """On-chain mode end to end: the ModelRegistry gives 60% of model m to the recipient kind Holders; after
    sync-registry and sync-holders, close-epoch weights the holders over blocks up to the registry block it settles
    with (recorded), each holder's payable is its largest-remainder part over the balances the token reports block
    by block; settled on the distributor, a holder claims exactly that; the epoch's settlement-v3 bundle audits
    clean against the chain's root and digest and its holders' weights against the token's Transfer logs, and a
    weight the logs do not give is named."""
    w3 = anvil.w3
    registry_address = royalty("deploy-registry", "--rpc-url", anvil.url)["registry"]
    token = _deploy(anvil)
    admin, h1, h2, alice = w3.eth.accounts[0], w3.eth.accounts[1], w3.eth.accounts[2], w3.eth.accounts[5]
    _send(anvil, token.functions.mint(h1, 1_000 * 10**18), admin)
    _send(anvil, token.functions.mint(h2, 3_000 * 10**18), admin)
    base = ("--rpc-url", anvil.url, "--registry", registry_address)
    royalty("registry", "register-model", "m", "--weights-uri", "ipfs://m", *base)
    # A first policy may start at its own block, not before: a margin, as the block mining it comes later (the latest
    # block's own time made this revert at load ~40).
    first = datetime.fromtimestamp(int(w3.eth.get_block("latest")["timestamp"]), UTC) + timedelta(seconds=120)
    royalty("registry", "set-policy", "m", "--effective-from", first.strftime("%Y-%m-%dT%H:%M:%S"),
            "--compute-share-ppm", "0", "--share", f"{alice}=400000", "--share", f"holders:{token.address}=600000",
            *base)  # fmt: skip
    lake = tmp_path / "lake"
    _Feed(lake).send(_metered(0, 10, first + timedelta(seconds=1)))
    anvil.advance_time(125)  # the registry block must come after the events' time
    _send(anvil, token.functions.transfer(h2, 400 * 10**18), h1)  # mid-range
    _mine(anvil, 3)
    registry_sync = royalty("sync-registry", "--lake", str(lake), *base)
    _send(anvil, token.functions.transfer(h1, 3_000 * 10**18), h2)  # after the registry block: not weighted
    _mine(anvil, 2)
    holder_sync = _sync(lake, anvil, token.address)
    assert holder_sync["to_block"] > registry_sync["to_block"]
    env = {"ROYALTY_REGISTRY_MODE": "onchain", "ROYALTY_REGISTRY": registry_address}
    closed = _close(lake, env)
    assert closed.exit_code == 0, closed.output
    with Ledger.open_read_only(str(lake)) as ledger:
        (recorded,) = ledger.connection.execute(
            "SELECT from_block, to_block FROM lake.main.settlement_epoch_blocks WHERE epoch = 1"
        ).fetchall()
    assert recorded == (holder_sync["from_block"], registry_sync["to_block"])  # ends at the registry block
    take = 10 * 1_000_003 * 600_000 // 1_000_000
    weights = _oracle_weights(token, [h1, h2], *recorded)
    paid = _payables(lake, 1)
    assert {h: paid[h] for h in (h1, h2)} == dict(allocate_by_weight(take, sorted(weights.items())))
    assert paid[alice] + take == 10 * 1_000_003

    distributor = deploy(anvil)["distributor"]
    settled = runner.invoke(app, ["settle", "--lake", str(lake), "--distributor", distributor, "--json"],
                            env={"ROYALTY_SETTLER_KEY": SETTLER_KEY, "ROYALTY_RPC_URL": anvil.url, **env})
    assert settled.exit_code == 0, (settled.output, "".join(traceback.format_exception(settled.exception)))
    assert claim_with_proof_output(lake, anvil, h2, tmp_path) == paid[h2]
    published = runner.invoke(app, ["publish", "--lake", str(lake), "--epoch", "1", "--to", str(tmp_path / "b")],
                              env=env)
    assert published.exit_code == 0, published.output
    audited = runner.invoke(app, ["audit", "--bundle", str(tmp_path / "b"), "--rpc-url", anvil.url,
                                  "--distributor", distributor])
    assert audited.exit_code == 0 and "settlement-v3" in audited.output and "match" in audited.output, audited.output
    # A weight the chain's Transfer logs do not give (the manifest's hash updated) is named against the chain.
    tampered = tmp_path / "tampered"
    shutil.copytree(tmp_path / "b", tampered)
    weights_file = tampered / "holder_weights.parquet"
    pl.read_parquet(weights_file).with_columns(
        pl.when(pl.col("holder") == h1).then(pl.lit("1")).otherwise(pl.col("weight")).alias("weight")
    ).write_parquet(weights_file)
    manifest = json.loads((tampered / "manifest.json").read_text())
    manifest["files"]["holder_weights.parquet"]["sha256"] = hashlib.sha256(weights_file.read_bytes()).hexdigest()
    (tampered / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(AuditDisagreement, match="the chain's Transfer logs give") as caught:
        audit_bundle(tampered, anvil.url, distributor)
    assert caught.value.what == f"holder weight {h1} of {token.address}"
