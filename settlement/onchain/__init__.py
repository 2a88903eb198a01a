"""On-chain settlement: the payout tree, the Merkle tree, the chain client, `settle`, claim sync, artifacts.

The verbs themselves are in `settlement.use_cases` (`settle`, `sync_claims`); this surface is what the
CLI needs beside them.
"""

from settlement.onchain import tables
from settlement.onchain.chain import (
    Chain,
    DeployRoles,
    claimer_key_env,
    connect,
    deploy_contracts,
    distributor_contract,
    embedded_url,
    growth_units_unlimited,
    load_signer,
    require_embedded_chain,
    settler_key_env,
    token_contract,
    transact,
)
from settlement.onchain.claiming import claimer_signer, proof_for_active_root, proof_in_root
from settlement.onchain.contract_artifacts import registry_artifact, token_artifact
from settlement.onchain.exceptions import ChainConfigError, NoSettlementError, TransactionRevertedError
from settlement.onchain.merkle import MerkleTree
from settlement.onchain.payout_tree import EpochTree
from settlement.onchain.proofs import account_proof, largest_leaves, recorded_distributor
from settlement.onchain.registry_ids import id_word
from settlement.onchain.registry_ops import (
    deploy_registry,
    policy_call,
    register_dataset,
    register_model,
    set_payout,
    set_policy,
)
from settlement.onchain.registry_sync import registry_contract

__all__ = [
    "Chain",
    "ChainConfigError",
    "DeployRoles",
    "EpochTree",
    "MerkleTree",
    "NoSettlementError",
    "TransactionRevertedError",
    "account_proof",
    "claimer_key_env",
    "claimer_signer",
    "connect",
    "deploy_contracts",
    "deploy_registry",
    "distributor_contract",
    "embedded_url",
    "growth_units_unlimited",
    "id_word",
    "largest_leaves",
    "load_signer",
    "policy_call",
    "proof_for_active_root",
    "proof_in_root",
    "recorded_distributor",
    "register_dataset",
    "register_model",
    "registry_artifact",
    "registry_contract",
    "require_embedded_chain",
    "set_payout",
    "set_policy",
    "settler_key_env",
    "tables",
    "token_artifact",
    "token_contract",
    "transact",
]
