"""The verb `sync-claims`: store the distributor's `Claimed` events in the ledger (`settlement.onchain.claims_sync`)."""

from settlement.onchain.claims_sync import ClaimSyncResult, sync_claims

__all__ = ["ClaimSyncResult", "sync_claims"]
