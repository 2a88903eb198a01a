"""The verb `claims-page`: write the contributor claim page of the newest recorded epoch.

The page itself is `settlement.reports.claims_page`; a publishing verb reuses `write_claims_page`.
"""

from settlement.reports.claims_page import (
    ClaimsPage,
    check_page_directory,
    claims_page_from_ledger,
    write_claims_page,
)

__all__ = ["ClaimsPage", "check_page_directory", "claims_page_from_ledger", "write_claims_page"]
