"""The verb `export`: write an epoch's payables, postings and statements as files (`settlement.reports.export`)."""

from settlement.reports.export import ExportSummary, export_epoch

__all__ = ["ExportSummary", "export_epoch"]
