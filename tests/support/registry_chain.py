"""A ModelRegistry on a test chain: deploying it (and a community's governance), ids, shares, signatures.

Shared by the contract tests (tests/contracts/test_model_registry.py) and the registry sync and settlement
tests, so each builds its chain the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from eth_abi import decode
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import to_checksum_address
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractCustomError

from settlement.onchain.contract_artifacts import load_artifact
from settlement.onchain.registry_ids import ACCOUNT, DATASET, MODEL, account_word, id_word

__all__ = ["ACCOUNT", "DATASET", "MODEL", "account_word", "id_word"]

# Blocks, as the token's clock counts: one to snapshot votes, five to vote in (mined by the test).
VOTING_DELAY_BLOCKS = 1
VOTING_PERIOD_BLOCKS = 5
QUORUM_PERCENT = 4
TIMELOCK_DELAY_S = 60


def deploy_contract(w3: Web3, name: str, sender: str, *args: object) -> Contract:
    """Deploy the committed artifact `name` with constructor `args` from `sender`."""
    build = load_artifact(name)
    factory = w3.eth.contract(abi=build.abi, bytecode=build.bytecode)
    receipt = w3.eth.wait_for_transaction_receipt(factory.constructor(*args).transact({"from": sender}))
    assert receipt["status"] == 1
    return w3.eth.contract(address=receipt["contractAddress"], abi=build.abi)


def send(w3: Web3, call: Any, sender: str) -> Any:
    """Send a transaction and return its receipt, failing the test if it reverted."""
    receipt = w3.eth.wait_for_transaction_receipt(call.transact({"from": sender}))
    assert receipt["status"] == 1
    return receipt


class Between:
    """Equal to any integer in `low..high`: a block time an `eth_call` runs at, which the node picks."""

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high

    def __eq__(self, other: object) -> bool:
        return isinstance(other, int) and self.low <= other <= self.high

    def __repr__(self) -> str:
        return f"Between({self.low}, {self.high})"


def assert_custom_error(contract: Contract, attempt: Callable[[], object], name: str, *args: object) -> None:
    """Assert that `attempt()` reverts with custom error `name` (from `contract`'s ABI) carrying exactly `args`."""
    entry = next(e for e in contract.abi if e["type"] == "error" and e["name"] == name)
    types = [arg["type"] for arg in entry["inputs"]]
    selector = Web3.keccak(text=f"{name}({','.join(types)})")[:4]
    with pytest.raises(ContractCustomError) as raised:
        attempt()
    data = raised.value.data
    data = bytes.fromhex(data[2:]) if isinstance(data, str) else data
    assert data[:4] == selector, f"expected {name}, got selector 0x{data[:4].hex()}"

    def normalised(values: Any) -> list[object]:
        return [to_checksum_address(v) if t == "address" else v for t, v in zip(types, values, strict=True)]

    decoded = normalised(decode(types, data[4:]))
    assert decoded == normalised(args), f"{name}{tuple(decoded)} != {name}{args}"


def reverts(contract: Contract, call: Any, sender: str, name: str, *args: object) -> None:
    """Assert that `call` sent by `sender` reverts with custom error `name` carrying `args`."""
    assert_custom_error(contract, lambda: call.call({"from": sender}), name, *args)


def payout_signature(registry: Contract, key: Any, account: str, payout: str, nonce: int, deadline: int) -> bytes:
    """`key`'s EIP-712 signature of SetPayoutAddress(account, payout, nonce, deadline) for `registry`."""
    message = encode_typed_data(
        full_message={
            "types": {
                "EIP712Domain": [
                    {"name": "name", "type": "string"},
                    {"name": "version", "type": "string"},
                    {"name": "chainId", "type": "uint256"},
                    {"name": "verifyingContract", "type": "address"},
                ],
                "SetPayoutAddress": [
                    {"name": "account", "type": "address"},
                    {"name": "payout", "type": "address"},
                    {"name": "nonce", "type": "uint256"},
                    {"name": "deadline", "type": "uint256"},
                ],
            },
            "primaryType": "SetPayoutAddress",
            "domain": {
                "name": "ModelRegistry",
                "version": "1",
                "chainId": registry.w3.eth.chain_id,
                "verifyingContract": registry.address,
            },
            "message": {"account": account, "payout": payout, "nonce": nonce, "deadline": deadline},
        }
    )
    return bytes(Account.sign_message(message, key.key).signature)


@dataclass
class Community:
    """A model community's governance: its voting token, Governor and TimelockController."""

    token: Contract
    governor: Contract
    timelock: Contract
    voters: list[str]


def deploy_community(w3: Web3, deployer: str, voters: list[str], votes_each: int = 10**21) -> Community:
    """An ERC20Votes token held by `voters` (each self-delegated), a Governor and a Timelock it proposes to."""
    token = deploy_contract(w3, "CommunityToken", deployer, "Community", "COMM", voters, [votes_each] * len(voters))
    for voter in voters:
        send(w3, token.functions.delegate(voter), voter)
    zero = "0x" + "00" * 20
    timelock = deploy_contract(w3, "CommunityTimelock", deployer, TIMELOCK_DELAY_S, [], [zero], deployer)
    governor = deploy_contract(
        w3,
        "CommunityGovernor",
        deployer,
        token.address,
        timelock.address,
        VOTING_DELAY_BLOCKS,
        VOTING_PERIOD_BLOCKS,
        QUORUM_PERCENT,
    )
    for role in ("PROPOSER_ROLE", "CANCELLER_ROLE"):
        send(w3, timelock.functions.grantRole(getattr(timelock.functions, role)().call(), governor.address), deployer)
    admin_role = timelock.functions.DEFAULT_ADMIN_ROLE().call()
    send(w3, timelock.functions.renounceRole(admin_role, deployer), deployer)
    return Community(token, governor, timelock, voters)
