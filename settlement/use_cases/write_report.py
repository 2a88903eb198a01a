"""The verb `report`: write an epoch's self-contained HTML report (`settlement.reports.html`)."""

from settlement.reports.html import ReportData, write_report

__all__ = ["ReportData", "write_report"]
