"""A real anvil (Foundry's EVM node, from the npm registry) for contract tests.

`npm ci` in `contracts/` installs the binary at
`contracts/node_modules/@foundry-rs/anvil-<os>-<arch>/bin/anvil`. contracts/package.json names the
linux-x64 package directly, not the `@foundry-rs/anvil` wrapper: the reachable registry serves no other
platform's package, and `npm ci` rejects a lock file that lacks the wrapper's optional ones. `Anvil`
runs the binary on a loopback port the OS picks (`--port 0`) and reads the port from its log. Under
`CI=true` a missing `node_modules` or binary fails the run; elsewhere the tests that need it are
skipped with the reason.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest
from web3 import Web3
from web3.contract import Contract

from settlement.onchain.contract_artifacts import distributor_artifact, token_artifact
from settlement.onchain.merkle import MerkleTree
from tests.support.components import skip_or_fail

REPO_ROOT = Path(__file__).resolve().parents[2]
CONTRACTS_DIR = REPO_ROOT / "contracts"
NODE_MODULES = CONTRACTS_DIR / "node_modules"

# anvil is listening within a second here; the bound only catches a binary that hangs.
START_TIMEOUT_S = 30
START_POLL_S = 0.05
STOP_TIMEOUT_S = 10
# The chain the tests and benchmarks assume: anvil's default id, and the fork the artifacts target.
CHAIN_ID = 31337
HARDFORK = "cancun"
TOKEN_DECIMALS = 6
NO_DIGEST = b"\x00" * 32

_listening = re.compile(r"Listening on (127\.0\.0\.1):(\d+)")
_arch_names = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def missing_prerequisite(reason: str) -> NoReturn:
    """Fail under CI (the install step is broken), skip elsewhere (a newcomer without node)."""
    skip_or_fail(f"{reason}; install it with `(cd contracts && npm ci)`")


def require_node_modules() -> Path:
    """The `contracts/node_modules` folder, after checking that node and the packages are there."""
    if shutil.which("node") is None:
        missing_prerequisite("`node` is not on PATH")
    if not (NODE_MODULES / ".package-lock.json").is_file():
        missing_prerequisite(f"`{NODE_MODULES}` is missing")
    return NODE_MODULES


def anvil_binary() -> Path:
    """The anvil executable that `npm ci` placed in the platform package."""
    require_node_modules()
    arch = _arch_names.get(platform.machine().lower(), platform.machine().lower())
    path = NODE_MODULES / "@foundry-rs" / f"anvil-{platform.system().lower()}-{arch}" / "bin" / "anvil"
    if not os.access(path, os.X_OK):
        missing_prerequisite(f"no anvil executable at `{path}`")
    return path


class Anvil:
    """One anvil process on 127.0.0.1, with its JSON-RPC URL and a connected `Web3`."""

    def __init__(self, binary: Path, log_path: Path, extra_args: tuple[str, ...] = (), port: int = 0) -> None:
        """Start anvil; `port` 0 lets the OS pick one (a restarted node passes its old port to keep its URL)."""
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop(), the process outlives a with-block
        self.process = subprocess.Popen(
            [
                str(binary),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--chain-id",
                str(CHAIN_ID),
                "--hardfork",
                HARDFORK,
                *extra_args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        try:
            self.url = self._wait_for_url()
            self.w3 = Web3(Web3.HTTPProvider(self.url, request_kwargs={"timeout": 60}))
            assert self.w3.eth.chain_id == CHAIN_ID
        except BaseException:
            self.stop()
            raise

    def _wait_for_url(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            match = _listening.search(self.log_path.read_text(errors="replace"))
            if match:
                return f"http://{match.group(1)}:{match.group(2)}"
            if self.process.poll() is not None:
                raise RuntimeError(f"anvil exited with {self.process.returncode}; see {self.log_path}")
            time.sleep(START_POLL_S)
        raise RuntimeError(f"anvil did not listen within {START_TIMEOUT_S} s; see {self.log_path}")

    def rpc(self, method: str, params: list[object]) -> object:
        """A raw JSON-RPC call (anvil's `evm_*` and `anvil_*` methods), raising on an error answer."""
        response = self.w3.provider.make_request(method, params)  # type: ignore[arg-type]
        if "error" in response:
            raise RuntimeError(f"{method} failed: {response['error']}")
        return response.get("result")

    def advance_time(self, seconds: int) -> None:
        """Move the chain's clock forward and mine a block at the new time."""
        self.rpc("evm_increaseTime", [seconds])
        self.rpc("evm_mine", [])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT_S)
        self._log.close()


@dataclass
class Deployment:
    w3: Web3
    token: Contract
    distributor: Contract
    admin: str
    settler: str
    guardian: str
    outsider: str

    def send(self, call: Any, sender: str) -> Any:
        """Send a transaction and return its receipt, failing the test if it reverted."""
        receipt = self.w3.eth.wait_for_transaction_receipt(call.transact({"from": sender}))
        assert receipt["status"] == 1
        return receipt

    def fund(self, amount_units: int) -> None:
        self.send(self.token.functions.mint(self.distributor.address, amount_units), self.admin)

    def propose(self, epoch: int, tree: MerkleTree, total_units: int | None = None) -> Any:
        total = (
            sum(tree.amount_units(tree.account_at(i)) for i in range(len(tree)))
            if total_units is None
            else (total_units)
        )
        return self.send(self.distributor.functions.proposeRoot(epoch, tree.root, total, NO_DIGEST), self.settler)

    def claim(self, tree: MerkleTree, account: str, amount_units: int | None = None) -> Any:
        amount = tree.amount_units(account) if amount_units is None else amount_units
        call = self.distributor.functions.claim(account, amount, tree.proof(account))
        return self.send(call, self.outsider)

    def balance(self, account: str) -> int:
        return self.token.functions.balanceOf(account).call()


GROWTH_UNLIMITED = 2**128 - 1
ZERO_ADDRESS = "0x" + "00" * 20


def deploy(
    w3: Web3,
    timelock_seconds: int,
    max_epoch_growth_units: int = GROWTH_UNLIMITED,
    admin_delay_seconds: int = 0,
    guardians: list[str] | None = None,
    treasury: str | None = None,
    predecessor: str = ZERO_ADDRESS,
) -> Deployment:
    """A TestToken and a distributor with distinct admin (account 0), settler (1) and guardian (2).

    `guardians` default to account 2; `treasury` to the admin.
    """
    admin, settler, guardian, outsider = w3.eth.accounts[:4]
    token_build, distributor_build = token_artifact(), distributor_artifact()
    token_factory = w3.eth.contract(abi=token_build.abi, bytecode=token_build.bytecode)
    receipt = w3.eth.wait_for_transaction_receipt(
        token_factory.constructor("Test USD", "TUSD", TOKEN_DECIMALS, admin).transact({"from": admin})
    )
    token = w3.eth.contract(address=receipt["contractAddress"], abi=token_build.abi)
    factory = w3.eth.contract(abi=distributor_build.abi, bytecode=distributor_build.bytecode)
    args = (
        token.address,
        timelock_seconds,
        admin_delay_seconds,
        admin,
        settler,
        guardians or [guardian],
        treasury or admin,
        max_epoch_growth_units,
        predecessor,
    )
    receipt = w3.eth.wait_for_transaction_receipt(factory.constructor(*args).transact({"from": admin}))
    assert receipt["status"] == 1
    distributor = w3.eth.contract(address=receipt["contractAddress"], abi=distributor_build.abi)
    return Deployment(w3, token, distributor, admin, settler, guardian, outsider)


@pytest.fixture(scope="session")
def anvil(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Anvil]:
    """A fresh anvil for the test session (per importing module: keep contract tests in one module)."""
    node = Anvil(anvil_binary(), tmp_path_factory.mktemp("anvil") / "anvil.log")
    try:
        yield node
    finally:
        node.stop()
