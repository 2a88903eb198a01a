"""Reports over a closed epoch: the export files (`export_epoch`) and the HTML report (`write_report`).

The verbs are in `settlement.use_cases`; `money` formats micros for the CLI's messages.
"""

from settlement.reports.html import money

__all__ = ["money"]
