"""Issue 18 on a real chain: `royalty audit --rpc-url --distributor` agrees with the root `royalty settle` proposed
on anvil, and names the chain when the distributor holds no root for the epoch or the manifest was tampered with.
The digest proposed with the root is the SHA-256 of the epoch's manifest (settlement-v2); an epoch whose tree was
written under settlement-v1 keeps its leaf digest and still audits."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ledger import Ledger
from royalty.cli import app
from settlement import close_epoch
from settlement.onchain.payout_tree import build_epoch_tree
from settlement.onchain.settle import _payables, write_tree
from tests.support.anvil import Anvil, anvil  # noqa: F401 - anvil is a fixture
from tests.support.settle_runs import deploy, new_lake, proposals, runner, settle


def test_the_audit_agrees_with_the_root_settled_on_anvil(anvil: Anvil, tmp_path: Path) -> None:  # noqa: F811
    lake = tmp_path / "lake"
    new_lake(lake, 60)
    deployed = deploy(anvil)
    settled = settle(lake, anvil, deployed["distributor"])
    assert settled["outcome"] == "proposed"
    bundle = tmp_path / "bundle"
    published = runner.invoke(app, ["publish", "--epoch", "1", "--to", str(bundle), "--lake", str(lake)])
    assert published.exit_code == 0, published.output
    audited = runner.invoke(
        app, ["audit", "--bundle", str(bundle), "--rpc-url", anvil.url, "--distributor", deployed["distributor"]]
    )
    assert audited.exit_code == 0, audited.output
    assert settled["root"] in audited.output and "distributor's root and ledger digest" in audited.output
    manifest = (bundle / "manifest.json").read_bytes()
    assert json.loads(manifest)["rules_version"] == "settlement-v2"
    (proposed,) = proposals(anvil, deployed["distributor"], 1)
    assert "0x" + bytes(proposed["args"]["ledgerDigest"]).hex() == "0x" + hashlib.sha256(manifest).hexdigest()

    # The root commits to the manifest: one edited where the recomputation cannot see it (its registry block)
    # still recomputes offline, but the chain's digest names it.
    edited = json.loads(manifest)
    edited["registry"] = {"chain_id": 1, "contract": "0x" + "11" * 20, "block_number": 7, "block_hash": "0x00"}
    (bundle / "manifest.json").write_text(json.dumps(edited, indent=1, sort_keys=True) + "\n")
    assert runner.invoke(app, ["audit", "--bundle", str(bundle)]).exit_code == 0
    tampered = runner.invoke(
        app, ["audit", "--bundle", str(bundle), "--rpc-url", anvil.url, "--distributor", deployed["distributor"]]
    )
    assert tampered.exit_code == 1 and "chain: the distributor's ledger digest" in tampered.output, tampered.output
    assert "not the one the root committed to" in tampered.output
    (bundle / "manifest.json").write_bytes(manifest)

    other = deploy(anvil)  # a distributor that never had a root for epoch 1
    refused = runner.invoke(
        app, ["audit", "--bundle", str(bundle), "--rpc-url", anvil.url, "--distributor", other["distributor"]]
    )
    assert refused.exit_code == 1 and "chain: no root proposed for epoch 1" in refused.output, refused.output
    alone = runner.invoke(app, ["audit", "--bundle", str(bundle), "--rpc-url", anvil.url])
    assert alone.exit_code == 2 and "--distributor" in alone.output, alone.output


def test_an_epoch_settled_with_the_leaf_digest_still_audits(anvil: Anvil, tmp_path: Path) -> None:  # noqa: F811
    """Stored data outlives code: a tree written before format 9 (leaf digest, no stored manifest) is proposed with
    its stored digest, never recomputed under settlement-v2; its bundle names settlement-v1 and audits against
    the chain."""
    lake = tmp_path / "lake"
    new_lake(lake, 40)
    with Ledger.open(lake) as ledger:  # what `settle` of format 8 wrote: the tree with its leaf digest
        summary = close_epoch(ledger)
        old = build_epoch_tree(1, summary.closing_snapshot, _payables(ledger.connection, 1))
        write_tree(ledger, old)
    deployed = deploy(anvil)
    settle(lake, anvil, deployed["distributor"])
    (proposed,) = proposals(anvil, deployed["distributor"], 1)
    assert "0x" + bytes(proposed["args"]["ledgerDigest"]).hex() == old.ledger_digest
    bundle = tmp_path / "bundle"
    published = runner.invoke(app, ["publish", "--epoch", "1", "--to", str(bundle), "--lake", str(lake)])
    assert published.exit_code == 0 and "settlement-v1" in published.output, published.output
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert (manifest["rules_version"], manifest["ledger_digest"]) == ("settlement-v1", old.ledger_digest)
    audited = runner.invoke(
        app, ["audit", "--bundle", str(bundle), "--rpc-url", anvil.url, "--distributor", deployed["distributor"]]
    )
    assert audited.exit_code == 0 and "settlement-v1" in audited.output, audited.output
