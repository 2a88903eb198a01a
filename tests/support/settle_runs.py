"""Shared helpers of the settle tests (tests/settlement, tests/faults): a ledger with sample traffic, the
`royalty` CLI in-process and as a subprocess (optionally SIGKILLed around its send), deployed contracts,
the proposals on the chain and the settlement rows of a ledger.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl
from typer.testing import CliRunner

from ingest.sample import SampleShape, SampleTraffic
from ledger import IngestBatch, Ledger, PartitionOffsets, define_views, run_query
from royalty.cli import app
from schemas import BatchDecoder
from settlement.onchain.chain import connect, distributor_contract, token_contract
from tests.support.anvil import REPO_ROOT, Anvil

SETTLER_KEY = "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a"  # anvil account 4
CLAIMER_KEY = "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba"  # anvil account 5
MINT_UNITS = 10**15
shape = SampleShape(models=4, contributors=8, compute_providers=2, payers=20)
runner = CliRunner()
# The longest wait for a settle subprocess to reach a point a test waits for.
wait_s_max = 120


def append(ledger: Ledger, values: list[bytes], first_offset: int) -> int:
    offsets = list(range(first_offset, first_offset + len(values)))
    batch = IngestBatch.from_messages(values, ["t"] * len(values), [0] * len(values), offsets, BatchDecoder())
    ledger.append(batch, [PartitionOffsets("t", 0, first_offset, first_offset + len(values))])
    return first_offset + len(values)


def new_lake(lake: Path, events: int, seed: int = 3) -> tuple[SampleTraffic, int]:
    traffic = SampleTraffic(shape, seed=seed)
    with Ledger.open(str(lake)) as ledger:
        offset = append(ledger, list(traffic.registry()) + list(traffic.metered(events)), 0)
    return traffic, offset


def royalty(*args: str, env: dict[str, str] | None = None) -> dict:
    """Run a `royalty` command in-process with `--json`; return its JSON output."""
    result = runner.invoke(app, [*args, "--json"], env={"ROYALTY_SETTLER_KEY": SETTLER_KEY, **(env or {})})
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def deploy(node: Anvil) -> dict:
    return royalty("deploy", "--rpc-url", node.url, "--timelock-seconds", "0", "--mint-units", str(MINT_UNITS))


def settle(lake: Path, node: Anvil, distributor: str) -> dict:
    return royalty("settle", "--lake", str(lake), "--rpc-url", node.url, "--distributor", distributor)


def expected_units(lake: Path) -> dict[str, int]:
    """Each payout address's cumulative payable, from the `payables` view (latest row per contributor)."""
    with Ledger.open_read_only(str(lake)) as ledger:
        define_views(ledger)
        rows = run_query(
            ledger,
            """SELECT lower(payout_address) AS address, sum(cumulative_micros)::BIGINT AS units
               FROM (SELECT recipient, arg_max(cumulative_micros, epoch) AS cumulative_micros,
                            arg_max(payout_address, epoch) AS payout_address
                     FROM payables GROUP BY recipient)
               WHERE payout_address IS NOT NULL GROUP BY 1""",
        )
    return dict(zip(rows["address"].to_pylist(), rows["units"].to_pylist(), strict=True))


def claim_with_proof_output(lake: Path, node: Anvil, account: str, tmp_path: Path) -> int:
    proof = royalty("proof", "--lake", str(lake), "--account", account)
    path = tmp_path / f"proof-{account}.json"
    path.write_text(json.dumps(proof))
    claimed = royalty(
        "claim", "--proof-file", str(path), "--rpc-url", node.url, env={"ROYALTY_CLAIMER_KEY": CLAIMER_KEY}
    )
    assert claimed["cumulative_amount"] == proof["cumulative_amount"]
    return int(claimed["paid_units"])


def proposals(node: Anvil, distributor: str, epoch: int) -> list:
    chain = connect(node.url, None)
    contract = distributor_contract(chain, distributor)
    return contract.events.RootProposed.get_logs(from_block=0, argument_filters={"epoch": epoch})


# Runs the real CLI (argv after `-c ...`) with `settle`'s `broadcast` wrapped to SIGKILL the process just
# before or just after it sends `proposeRoot` (SETTLE_CRASH_AT = `before-send` / `after-send`).
_crash_driver = """
import os, signal, sys
import settlement.onchain.settle as settle_module

point = os.environ["SETTLE_CRASH_AT"]
real_broadcast = settle_module.broadcast

def broadcast(*args, **kwargs):
    if point == "before-send":
        os.kill(os.getpid(), signal.SIGKILL)
    result = real_broadcast(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
    return result

settle_module.broadcast = broadcast
from royalty.cli import main

sys.argv = ["royalty", *sys.argv[1:]]
main()
"""


def settle_process(lake: Path, node: Anvil, distributor: str, crash_at: str | None) -> subprocess.CompletedProcess:
    """`royalty settle --json` in a subprocess; with `crash_at` (`before-send`, `after-send`) it is SIGKILLed there."""
    env = {**os.environ, "ROYALTY_SETTLER_KEY": SETTLER_KEY, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("SETTLE_CRASH_AT", None)
    command = [sys.executable, "-m", "royalty.cli"]
    if crash_at:
        env["SETTLE_CRASH_AT"] = crash_at
        command = [sys.executable, "-c", _crash_driver]
    args = ["settle", "--lake", str(lake), "--rpc-url", node.url, "--distributor", distributor, "--json"]
    return subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=120)


def settlement_rows(lake: Path, table: str) -> list[dict]:
    with Ledger.open_read_only(str(lake)) as ledger:
        return pl.from_arrow(
            ledger.connection.execute(f"SELECT * FROM lake.main.{table}").fetch_arrow_table()
        ).to_dicts()


def settle_popen(lake: Path, node: Anvil, distributor: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "ROYALTY_SETTLER_KEY": SETTLER_KEY, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "royalty.cli", "settle", "--lake", str(lake), "--rpc-url", node.url]
    return subprocess.Popen(
        [*command, "--distributor", distributor, "--json", *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until(condition: Callable[[], object], process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + wait_s_max
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"settle exited ({process.returncode}) before {what}: {process.communicate()}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def prefund(node: Anvil, distributor: str) -> None:
    """Fund more than enough up front, so settle sends no funding transfer (and waits on none)."""
    chain = connect(node.url, None)
    token = token_contract(chain, distributor_contract(chain, distributor))
    settler = chain.w3.eth.account.from_key(SETTLER_KEY).address
    node.w3.eth.wait_for_transaction_receipt(token.functions.transfer(distributor, 10**12).transact({"from": settler}))


def assert_one_root_recorded(lake: Path, node: Anvil, distributor: str) -> dict:
    """Exactly one RootProposed for epoch 1, with the ledger's root, and one record naming its tx and block."""
    (root_row,) = settlement_rows(lake, "settlement_root")
    (proposal,) = proposals(node, distributor, 1)
    assert "0x" + bytes(proposal["args"]["root"]).hex() == root_row["root"]
    (record,) = settlement_rows(lake, "settlement_record")
    receipt = node.w3.eth.get_transaction_receipt(record["tx_hash"])
    assert record["tx_hash"] == "0x" + bytes(proposal["transactionHash"]).hex()
    assert (record["block_number"], record["block_hash"]) == (
        receipt["blockNumber"],
        "0x" + bytes(receipt["blockHash"]).hex(),
    )
    return record
