"""Bounds of the split engine, each with the reason for its value."""

from schemas import limits
from schemas.errors import require

ppm_total = limits.ppm_total

# A lineage chain longer than this is a registry mistake, not a real model family; the bound
# also caps the number of upstream allocation rounds an epoch runs.
lineage_depth_max = 16

# Every amount stored in the ledger is a Parquet int64; an epoch amount past this (9.2e12 units
# of a 6-decimal asset) means corrupt input, and is refused rather than wrapped.
amount_micros_max = 2**63 - 1

# Entry ids hash long route keys down to this many hex digits: 64 bits keep collisions among
# the few thousand routes of an epoch far below one in a billion.
key_hex_digits = 16

# The most `holder_dust_units_min` may be (schemas.limits, where the settings read it without the engine).
holder_dust_units_min_limit = limits.holder_dust_units_min_limit

# The check for events an earlier epoch stored matches each earlier file's recorded id bounds against the new ids
# that are not above every earlier id (resends, usually few) one by one when there are at most this many (sorted in
# memory: a few MB); more, and it opens every earlier file whose bounds reach their overall range.
resent_ids_matched_max = 100_000

# The first time any policy can be in force: before it, no model has a policy.
time_origin_year = limits.event_year_min

require(lineage_depth_max >= 5, "the issue requires lineage DAGs of depth 5")
require(limits.fee_micros_max * ppm_total < 2**127 // 2**40, "Int128 products of a fee sum and ppm fit")
