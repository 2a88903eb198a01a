"""The verb `sync-registry`: store ModelRegistry's events in the ledger (`settlement.onchain.registry_sync`)."""

from settlement.onchain.registry_sync import RegistrySyncResult, sync_registry

__all__ = ["RegistrySyncResult", "sync_registry"]
