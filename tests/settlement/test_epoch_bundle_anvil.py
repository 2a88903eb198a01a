"""Issue 18 on a real chain: `royalty audit --rpc-url --distributor` agrees with the root `royalty settle` proposed
on anvil, and names the chain when the distributor holds no root for the epoch."""

from __future__ import annotations

from pathlib import Path

from royalty.cli import app
from tests.support.anvil import Anvil, anvil  # noqa: F401 - anvil is a fixture
from tests.support.settle_runs import deploy, new_lake, runner, settle


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
    assert settled["root"] in audited.output and "distributor's root for the epoch matches" in audited.output

    other = deploy(anvil)  # a distributor that never had a root for epoch 1
    refused = runner.invoke(
        app, ["audit", "--bundle", str(bundle), "--rpc-url", anvil.url, "--distributor", other["distributor"]]
    )
    assert refused.exit_code == 1 and "chain: no root proposed for epoch 1" in refused.output, refused.output
    alone = runner.invoke(app, ["audit", "--bundle", str(bundle), "--rpc-url", anvil.url])
    assert alone.exit_code == 2 and "--distributor" in alone.output, alone.output
