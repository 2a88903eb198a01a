"""`settle` and `sync-claims` read the distributor's logs from its deployment block, in bounded ranges.

Public JSON-RPC providers refuse `eth_getLogs` from block 0 or over long ranges. Against a real anvil whose
chain is longer than the (shrunk) range bound both before and after the deployment, every `eth_getLogs` the
commands send is recorded: none starts before the deployment block (found on the chain, or passed with
`--from-block`, or after the previous epoch's recorded proposal), and none spans more than the bound.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from web3 import HTTPProvider

import settlement.onchain.chain_logs as chain_logs
from tests.support.anvil import Anvil, anvil  # noqa: F401 - anvil is a fixture
from tests.support.settle_runs import append, deploy, new_lake, royalty, settlement_rows

SPAN_BLOCKS = 7
BLOCKS_BEFORE = 40
BLOCKS_AFTER = 25


def _record_get_logs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Every eth_getLogs sent through web3's HTTP provider in this process, as (from block, to block)."""
    calls: list[tuple[int, int]] = []
    real = HTTPProvider.make_request

    def make_request(self, method, params):  # type: ignore[no-untyped-def]
        if method == "eth_getLogs":
            query = params[0]
            calls.append((int(query["fromBlock"], 0), int(query["toBlock"], 0)))
        return real(self, method, params)

    monkeypatch.setattr(HTTPProvider, "make_request", make_request)
    return calls


def _assert_bounded_from(calls: list[tuple[int, int]], first_block: int) -> None:
    assert calls, "no eth_getLogs was sent"
    assert all(start >= first_block for start, _ in calls), (first_block, calls)
    assert all(0 <= end - start + 1 <= SPAN_BLOCKS for start, end in calls), calls
    assert min(start for start, _ in calls) == first_block, (first_block, calls)


def test_settle_and_sync_claims_read_logs_from_the_deployment_block_in_bounded_ranges(
    anvil: Anvil,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Blocks before and after the deployment; `deploy` prints its block; settle (deployment block found on
    the chain), sync-claims (--from-block) and a second epoch's settle (after the first proposal) never ask
    for a log before those blocks nor for more than SPAN_BLOCKS blocks at once."""
    anvil.rpc("anvil_mine", [hex(BLOCKS_BEFORE)])
    deployed = deploy(anvil)
    deployment_block = deployed["deployment_block"]
    distributor = deployed["distributor"]
    assert anvil.w3.eth.get_code(distributor, deployment_block - 1) == b""
    assert anvil.w3.eth.get_code(distributor, deployment_block) != b""
    assert deployment_block > BLOCKS_BEFORE > SPAN_BLOCKS
    anvil.rpc("anvil_mine", [hex(BLOCKS_AFTER)])
    monkeypatch.setattr(chain_logs, "block_span_max", SPAN_BLOCKS)
    calls = _record_get_logs(monkeypatch)

    lake = tmp_path / "lake"
    traffic, offset = new_lake(lake, 60)
    royalty(
        "sync-claims",
        "--lake",
        str(lake),
        "--rpc-url",
        anvil.url,
        "--distributor",
        distributor,
        "--from-block",
        str(deployment_block),
    )
    _assert_bounded_from(calls, deployment_block)

    calls.clear()
    first = royalty("settle", "--lake", str(lake), "--rpc-url", anvil.url, "--distributor", distributor)
    assert first["outcome"] == "proposed"
    _assert_bounded_from(calls, deployment_block)  # found on the chain by binary search

    from ledger import Ledger

    with Ledger.open(str(lake)) as ledger:
        append(ledger, list(traffic.metered(40)), offset)
    anvil.rpc("anvil_mine", [hex(BLOCKS_AFTER)])
    calls.clear()
    second = royalty(
        "settle",
        "--lake",
        str(lake),
        "--rpc-url",
        anvil.url,
        "--distributor",
        distributor,
        "--from-block",
        str(deployment_block),
    )
    assert (second["outcome"], second["epoch"]) == ("proposed", 2)
    (record_1,) = [r for r in settlement_rows(lake, "settlement_record") if r["epoch"] == 1]
    _assert_bounded_from(calls, record_1["block_number"])
