"""On-chain settlement: the payout tree, the Merkle tree, the chain client, `settle`, claim sync, artifacts.

The verbs themselves are in `settlement.use_cases` (`settle`, `sync_claims`); this surface is what the
CLI needs beside them.

Names are imported on first use (`schemas.lazy_surface`): a command that needs only the tables does not
load web3.
"""

from schemas.lazy_surface import lazy_surface

__getattr__, __dir__, __all__ = lazy_surface(
    __name__,
    {
        "settlement.onchain.tables": ["tables"],
        "settlement.onchain.chain": [
            "Chain",
            "DeployRoles",
            "claimer_key_env",
            "connect",
            "deploy_contracts",
            "distributor_contract",
            "embedded_url",
            "growth_units_unlimited",
            "load_signer",
            "require_embedded_chain",
            "settler_key_env",
            "token_contract",
            "transact",
        ],
        "settlement.onchain.claiming": ["claimer_signer", "proof_for_active_root", "proof_in_root"],
        "settlement.onchain.contract_artifacts": ["registry_artifact", "token_artifact"],
        "settlement.onchain.exceptions": ["ChainConfigError", "NoSettlementError", "TransactionRevertedError"],
        "settlement.onchain.merkle": ["MerkleTree"],
        "settlement.onchain.payout_tree": ["EpochTree"],
        "settlement.onchain.proofs": ["account_proof", "largest_leaves", "recorded_distributor"],
        "settlement.onchain.registry_ids": ["id_word"],
        "settlement.onchain.registry_ops": [
            "deploy_registry",
            "policy_call",
            "register_dataset",
            "register_model",
            "set_payout",
            "set_policy",
        ],
        "settlement.onchain.registry_sync": ["registry_contract"],
    },
)
