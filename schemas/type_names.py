"""Names of event types that modules outside the decoder need without importing the models (the CLI's settings)."""

# The operator registry's event types: who may write each is decided at settlement (settlement.engine.authority).
registry_event_types = ("ai.model.registered.v1", "ai.contributor.registered.v1", "ai.split-policy.set.v1")
