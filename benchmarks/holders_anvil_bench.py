"""Indexing N `Transfer` logs from anvil with the real `royalty sync-holders`, then balances at a block (issue 17).

Starts anvil (a high block gas limit), deploys benchmarks/contracts/HolderBenchToken.sol (an OpenZeppelin ERC-20
that emits many transfers per transaction; compiled here with the npm solc of contracts/), mints to H holders and
makes one-unit transfers between random holders until N Transfer logs exist, `--per-tx` per transaction (anvil
mines one block per transaction: N / per-tx blocks, so `sync-holders` reads them in several 2,000-block ranges).
Then runs `royalty sync-holders` (a subprocess: the CLI as an operator runs it) into a new ledger and times it
(logs/s), times `balances_at` at the last block, and checks a sample of those balances against `balanceOf`.

    python benchmarks/holders_anvil_bench.py --logs 1000000 --holders 100000 [--per-tx 100] \
        [--anvil-arg=--prune-history]

It also prints anvil's peak resident memory (VmHWM) after making the logs and at the end, and the sync's CPU time
(the subprocess's user + system seconds).

A benchmark, not a test: it is never collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ledger import Ledger
from settlement.holders import balances_at
from settlement.use_cases.ledger_setup import register_with_ledger
from tests.support.anvil import CHAIN_ID, Anvil, anvil_binary

root = Path(__file__).resolve().parents[1]
first_holder = 2**120  # holders are the addresses first_holder .. first_holder + H - 1
_compile = """
import { createRequire } from 'node:module'
import { readFileSync } from 'node:fs'
const require = createRequire(process.cwd() + '/package.json')
const solc = require('solc')
const source = readFileSync(process.argv[1], 'utf8')
const input = { language: 'Solidity', sources: { 'Bench.sol': { content: source } },
  settings: { evmVersion: 'cancun', optimizer: { enabled: true, runs: 200 },
              outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object'] } } } }
const imports = (path) => ({ contents: readFileSync('node_modules/' + path, 'utf8') })
const output = JSON.parse(solc.compile(JSON.stringify(input), { import: imports }))
for (const e of output.errors ?? []) if (e.severity === 'error') { console.error(e.formattedMessage); process.exit(1) }
const c = output.contracts['Bench.sol'].HolderBenchToken
console.log(JSON.stringify({ abi: c.abi, bytecode: c.evm.bytecode.object }))
"""


def compile_token() -> tuple[list, str]:
    source = root / "benchmarks" / "contracts" / "HolderBenchToken.sol"
    done = subprocess.run(
        ["node", "--input-type=module", "-e", _compile, str(source)],
        cwd=root / "contracts", capture_output=True, text=True, check=True,
    )
    built = json.loads(done.stdout)
    return built["abi"], "0x" + built["bytecode"]


def _rpc_batch(url: str, session: requests.Session, calls: list[tuple[str, list]]) -> list:
    body = [{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(calls)]
    answers = sorted(session.post(url, json=body, timeout=600).json(), key=lambda a: a["id"])
    for answer in answers:
        if "error" in answer:
            raise RuntimeError(f"anvil refused: {answer['error']}")
    return [answer["result"] for answer in answers]


def make_logs(node: Anvil, token, sender: str, holders: int, logs: int, per_tx: int, gas: int) -> int:
    """Mint to `holders` holders, then one-unit transfers until `logs` Transfer logs exist; return the last block."""
    session = requests.Session()
    calls = []
    for first in range(0, holders, per_tx):
        count = min(per_tx, holders - first)
        calls.append(token.functions.mintMany(first_holder + first, count, 10**18)._encode_transaction_data())
    for index in range(0, logs - holders, per_tx):
        count = min(per_tx, logs - holders - index)
        calls.append(token.functions.shuffle(first_holder, holders, count, index)._encode_transaction_data())
    began, nonce = time.perf_counter(), node.w3.eth.get_transaction_count(sender)
    # One request per transaction: anvil's automine then mines each in its own block before answering (a JSON-RPC
    # batch's transactions arrive together and share blocks).
    for index, data in enumerate(calls):
        sent = {"from": sender, "to": token.address, "gas": hex(gas), "data": data, "nonce": hex(nonce + index)}
        (tx_hash,) = _rpc_batch(node.url, session, [("eth_sendTransaction", [sent])])
        if index % 2000 == 0:
            print(f"  {index + 1:,} of {len(calls):,} transactions sent", flush=True)
    receipt = node.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=600)
    if receipt["status"] != 1:
        raise RuntimeError("the last transaction reverted")
    block = receipt["blockNumber"]
    print(f"made {logs:,} Transfer logs in {len(calls):,} transactions: {time.perf_counter() - began:.1f} s "
          f"(head block {block:,})", flush=True)
    return block


def anvil_memory_mb(node: Anvil) -> str:
    """anvil's resident and peak resident memory now (from /proc), for the record."""
    status = Path(f"/proc/{node.process.pid}/status").read_text().splitlines()
    kb = {line.split(":")[0]: int(line.split()[1]) for line in status if line.startswith(("VmRSS", "VmHWM"))}
    return f"anvil RSS {kb['VmRSS'] / 1024:,.0f} MB (peak {kb['VmHWM'] / 1024:,.0f} MB)"


def _profiled_sync(stats: Path, lake: Path, node: Anvil, token: str, first_block: int) -> None:
    import cProfile

    from settlement.onchain.chain import connect
    from settlement.use_cases.sync_holders import holder_token_contract, sync_holders

    chain = connect(node.url, None)
    with Ledger.open(str(lake)) as ledger:
        cProfile.runctx(
            "sync_holders(ledger, chain, holder_token_contract(chain, token), None, first_block)",
            {"sync_holders": sync_holders, "holder_token_contract": holder_token_contract},
            {"ledger": ledger, "chain": chain, "token": token, "first_block": first_block},
            str(stats),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", type=int, default=100_000)
    parser.add_argument("--holders", type=int, default=10_000)
    parser.add_argument("--per-tx", type=int, default=100, help="Transfer logs per transaction (and block)")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--anvil-arg", action="append", default=[], help="an extra anvil option (repeatable)")
    parser.add_argument("--profile", type=Path, help="run the sync in this process under cProfile, stats to this file")
    args = parser.parse_args()
    register_with_ledger()
    folder = Path(tempfile.mkdtemp(prefix="holders-anvil-bench-"))
    gas = 60_000 * args.per_tx + 200_000
    # Blocks far from full: the base fee falls instead of outgrowing the transactions' fee cap.
    node = Anvil(anvil_binary(), folder / "anvil.log", ("--gas-limit", str(gas * 4), *args.anvil_arg))
    try:
        abi, bytecode = compile_token()
        sender = node.w3.eth.accounts[0]
        factory = node.w3.eth.contract(abi=abi, bytecode=bytecode)
        receipt = node.w3.eth.wait_for_transaction_receipt(factory.constructor().transact({"from": sender}))
        token = node.w3.eth.contract(address=receipt["contractAddress"], abi=abi)
        deployed_block = receipt["blockNumber"]
        last = make_logs(node, token, sender, args.holders, args.logs, args.per_tx, gas)
        print(anvil_memory_mb(node), flush=True)
        lake = folder / "lake"
        with Ledger.open(str(lake)):
            pass
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
        began, children_began = time.perf_counter(), os.times()
        if args.profile:
            _profiled_sync(args.profile, lake, node, token.address, deployed_block)
            return
        synced = subprocess.run(
            [sys.executable, "-m", "royalty.cli", "sync-holders", "--lake", str(lake), "--rpc-url", node.url,
             "--token", token.address, "--confirmations", "1", "--from-block", str(deployed_block), "--json"],
            capture_output=True, text=True, env=env, check=False,
        )
        took, children = time.perf_counter() - began, os.times()
        sync_cpu_s = (children.children_user - children_began.children_user) + (
            children.children_system - children_began.children_system
        )
        if synced.returncode != 0:
            raise SystemExit(f"sync-holders failed ({synced.returncode}): {synced.stderr[-2000:]}")
        result = json.loads(synced.stdout)
        print(f"sync-holders stored {result['transfers_added']:,} transfers of blocks {result['from_block']:,}.."
              f"{result['to_block']:,}: {took:.1f} s (CPU {sync_cpu_s:.1f} s), "
              f"{result['transfers_added'] / took:,.0f} logs/s", flush=True)
        with Ledger.open_read_only(str(lake)) as ledger:
            began = time.perf_counter()
            balances = balances_at(ledger.connection, CHAIN_ID, token.address, last)
            print(f"balances at block {last:,}: {time.perf_counter() - began:.2f} s, {len(balances):,} holders",
                  flush=True)
        sample = random.Random(1).sample(sorted(balances), min(20, len(balances)))
        wrong = [h for h in sample if token.functions.balanceOf(h).call(block_identifier=last) != balances[h]]
        print(f"balanceOf agrees for {len(sample) - len(wrong)} of {len(sample)} sampled holders", flush=True)
        print(anvil_memory_mb(node), flush=True)
        if wrong:
            raise SystemExit(f"balances differ from balanceOf for {wrong}")
    finally:
        node.stop()
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
