"""The verb `audit`: recompute an epoch's leaves and root from its bundle alone (`settlement.reports.audit`)."""

from settlement.reports.audit import AuditDisagreement, AuditResult, audit_bundle, verify_receipt

__all__ = ["AuditDisagreement", "AuditResult", "audit_bundle", "verify_receipt"]
