"""The verb `sync-holders`: store an ERC-20's `Transfer` logs in the ledger (`settlement.onchain.holders_sync`)."""

from settlement.onchain.holders_sync import HolderSyncResult, holder_token_contract, sync_holders

__all__ = ["HolderSyncResult", "holder_token_contract", "sync_holders"]
