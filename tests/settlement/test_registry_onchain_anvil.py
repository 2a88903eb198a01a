"""The on-chain registry end to end on a real anvil: the `royalty registry` commands write it, `sync-registry`
indexes it into the ledger once, and `close-epoch` in on-chain mode pays by it and by nothing else.

One anvil for the module (the session's); each test deploys its own registry and uses its own ledger.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from typer.testing import CliRunner

from ledger import Ledger, define_views, run_query
from royalty.cli import app
from tests.support.anvil import Anvil, anvil  # noqa: F401 - anvil is a fixture
from tests.support.settle_runs import SETTLER_KEY, append, royalty

runner = CliRunner()


def metered(event_id: str, model_id: str, at: datetime, provider: str, fee_micros: int, source: str = "gw") -> bytes:
    """One `ai.inference.metered.v1` CloudEvent."""
    return json.dumps(
        {
            "specversion": "1.0",
            "id": event_id,
            "source": source,
            "type": "ai.inference.metered.v1",
            "time": at.isoformat().replace("+00:00", "Z"),
            "data": {
                "model_id": model_id,
                "request_id": f"r-{event_id}",
                "payer": "payer-1",
                "compute_provider": provider,
                "input_tokens": 10,
                "output_tokens": 20,
                "fee_micros": fee_micros,
                "asset": "USDC",
            },
        }
    ).encode()


def cli(*args: str) -> dict:
    return royalty(*args)


def deploy_registry(node: Anvil) -> dict:
    return cli("deploy-registry", "--rpc-url", node.url)


def sync(lake: Path, node: Anvil, registry: str, *extra: str) -> dict:
    return cli("sync-registry", "--lake", str(lake), "--rpc-url", node.url, "--registry", registry, *extra)


def query(lake: Path, sql: str) -> list[dict]:
    with Ledger.open_read_only(str(lake)) as ledger:
        define_views(ledger)
        return run_query(ledger, sql).to_pylist()


def chain_time(node: Anvil) -> datetime:
    return datetime.fromtimestamp(int(node.w3.eth.get_block("latest")["timestamp"]), UTC)


def test_sync_registry_stores_each_event_once_in_block_order_and_catches_a_reorganisation(
    anvil: Anvil,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Register a model, a dataset, a split and a payout address with the CLI; sync: every event stored once in
    chain order with its block time; a rerun adds none; reverting the chain under the cursor stops the next
    sync, naming the block, and writes nothing."""
    lake = tmp_path / "lake"
    with Ledger.open(str(lake)):
        pass
    registry = deploy_registry(anvil)["registry"]
    base = ("--rpc-url", anvil.url, "--registry", registry)
    payee = anvil.w3.eth.accounts[6]
    cli("registry", "register-model", "base", *base)
    cli("registry", "register-dataset", "corpus", *base)
    start = (chain_time(anvil) + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S")
    cli("registry", "set-policy", "dataset:corpus", "--effective-from", start, "--share", f"{payee}=1000000", *base)
    cli(
        "registry", "set-policy", "base", "--effective-from", start, "--compute-share-ppm", "100000",
        "--share", f"{payee}=700000", "--share", "dataset:corpus=300000", *base,
    )  # fmt: skip
    cli("registry", "set-payout", anvil.w3.eth.accounts[7], *base)

    first = sync(lake, anvil, registry)
    assert first["events_added"] == 5
    rows = query(lake, "SELECT event, subject, block_number, log_index FROM registry_event ORDER BY block_number")
    assert [(r["event"], r["subject"]) for r in rows] == [
        ("ModelRegistered", "base"),
        ("DatasetRegistered", "corpus"),
        ("SplitPolicySet", "corpus"),
        ("SplitPolicySet", "base"),
        ("PayoutAddressSet", anvil.w3.eth.accounts[4]),
    ]
    again = sync(lake, anvil, registry)
    assert again["events_added"] == 0 and again["from_block"] == first["to_block"] + 1

    snapshot = anvil.rpc("evm_snapshot", [])
    cli("registry", "register-model", "later", *base)
    synced = sync(lake, anvil, registry)
    assert synced["events_added"] == 1
    anvil.rpc("evm_revert", [snapshot])
    for _ in range(3):
        anvil.rpc("evm_mine", [])
    result = runner.invoke(
        app,
        ["sync-registry", "--lake", str(lake), "--rpc-url", anvil.url, "--registry", registry],
        env={"ROYALTY_SETTLER_KEY": SETTLER_KEY},
    )
    assert result.exit_code != 0
    message = " ".join(result.output.split())
    assert f"block {synced['to_block']} was 0x" in message
    assert query(lake, "SELECT count(*) AS n FROM registry_event") == [{"n": 6}]


__all__ = ["append", "metered"]
