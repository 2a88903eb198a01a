"""Writing to ModelRegistry: deploy it, register a model or a dataset, set a split, set a payout address.

Each call is simulated first (a refusal names the contract's custom error and its values, nothing sent),
then signed with the chain's signer (the key from the environment, as `settle` uses) and waited for.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from web3 import Web3
from web3.contract import Contract

from settlement.onchain.chain import Chain, transact
from settlement.onchain.contract_artifacts import registry_artifact
from settlement.onchain.exceptions import ChainConfigError
from settlement.onchain.registry_ids import id_word, recipient_tuple, sorted_shares

no_digest = "0x" + "00" * 32


@dataclass(frozen=True)
class RegistryTx:
    """A registry transaction that was mined: what it did, its hash and block."""

    action: str
    tx_hash: str
    block_number: int


@dataclass(frozen=True)
class DeployedRegistry:
    registry: str
    chain_id: int
    deployment_block: int  # `sync-registry` reads the registry's events from here (`--from-block`)


def deploy_registry(chain: Chain) -> DeployedRegistry:
    """Deploy a ModelRegistry (it has no admin: nobody owns it)."""
    build = registry_artifact()
    factory = chain.w3.eth.contract(abi=build.abi, bytecode=build.bytecode)
    receipt = transact(chain, factory.constructor(), "deploy ModelRegistry")
    return DeployedRegistry(receipt["contractAddress"], chain.chain_id, int(receipt["blockNumber"]))


def _digest(value: str | None) -> bytes:
    text = (value or no_digest).removeprefix("0x")
    if len(text) != 64:
        raise ChainConfigError(f"`{value}` is not a 32-byte hex digest", "digest")
    return bytes.fromhex(text)


def _address(value: str | None, default: str, setting: str) -> str:
    if value is None:
        return default
    if not Web3.is_address(value):
        raise ChainConfigError(f"`{value}` is not an address", setting)
    return Web3.to_checksum_address(value)


def _done(action: str, receipt: dict) -> RegistryTx:
    return RegistryTx(action, "0x" + bytes(receipt["transactionHash"]).hex(), int(receipt["blockNumber"]))


def register_model(
    chain: Chain,
    registry: Contract,
    model_id: str,
    parents: dict[str, int],
    governor: str | None = None,
    min_derivative_share_ppm: int = 0,
    weights_digest: str | None = None,
    weights_uri: str = "",
) -> RegistryTx:
    """Register `model_id` owned by the signer, with `parents` (id: share ppm) and a governor (default: the signer)."""
    words = sorted((id_word(parent), share_ppm) for parent, share_ppm in parents.items())
    action = f"register model {model_id}"
    call = registry.functions.registerModel(
        id_word(model_id),
        words,
        min_derivative_share_ppm,
        _digest(weights_digest),
        weights_uri,
        _address(governor, chain.sender, "governor"),
    )
    return _done(action, transact(chain, call, action))


def register_dataset(
    chain: Chain,
    registry: Contract,
    dataset_id: str,
    governor: str | None = None,
    content_digest: str | None = None,
    content_uri: str = "",
) -> RegistryTx:
    """Register `dataset_id` owned by the signer, with its content and a governor (default: the signer)."""
    action = f"register dataset {dataset_id}"
    call = registry.functions.registerDataset(
        id_word(dataset_id), _digest(content_digest), content_uri, _address(governor, chain.sender, "governor")
    )
    return _done(action, transact(chain, call, action))


def policy_call(
    registry: Contract,
    subject: str,
    effective_from: datetime,
    shares: dict[str, int],
    compute_share_ppm: int = 0,
):
    """The contract call that sets `subject`'s split (`dataset:<id>` for a dataset's), for a signer or a proposal."""
    tuples = sorted_shares([recipient_tuple(name, share_ppm) for name, share_ppm in shares.items()])
    at = int(effective_from.timestamp())
    if subject.startswith("dataset:"):
        if compute_share_ppm:
            raise ChainConfigError("a dataset's split has no compute share", "compute_share_ppm")
        return registry.functions.setDatasetPolicy(id_word(subject.removeprefix("dataset:")), at, tuples)
    return registry.functions.setModelPolicy(id_word(subject), at, compute_share_ppm, tuples)


def set_policy(
    chain: Chain,
    registry: Contract,
    subject: str,
    effective_from: datetime,
    shares: dict[str, int],
    compute_share_ppm: int = 0,
) -> RegistryTx:
    """Set `subject`'s split from `effective_from` on, signed by its governor."""
    action = f"set the split of {subject} from {effective_from.isoformat()}"
    call = policy_call(registry, subject, effective_from, shares, compute_share_ppm)
    return _done(action, transact(chain, call, action))


def set_payout(chain: Chain, registry: Contract, payout: str) -> RegistryTx:
    """Send the signer's payouts to `payout` from the block this lands in."""
    address = _address(payout, chain.sender, "payout")
    action = f"set the payout address of {chain.sender} to {address}"
    return _done(action, transact(chain, registry.functions.setPayoutAddress(address), action))
