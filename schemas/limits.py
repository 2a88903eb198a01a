"""Upper bounds on everything a producer can send, in one place.

Each bound is part of the contract with producers: a message past one of them is rejected
with a reason that names the bound, never truncated or silently accepted.
"""

from schemas.errors import require

# A metering event is ~400 bytes; 64 KiB leaves room for large policies while keeping one
# bad producer from making a batch hold gigabytes in memory.
message_bytes_max = 64 * 1024

# Identifiers (model, contributor, payer, provider, request ids) are short opaque keys.
identifier_chars_max = 128
event_id_chars_max = 128
source_chars_max = 512
reason_chars_max = 256

# Token counts past 2**40 per call are not plausible; the bound keeps sums far from int64.
tokens_max = 2**40

# One fee is at most 10**12 micros (one million units of the asset). A day of 10**8 events at
# this maximum sums to 10**20, past int64; settlement sums per group in Int128-safe Python ints
# or checks for overflow, so this bound is about rejecting nonsense, not about int64.
fee_micros_max = 10**12

# A token holder's part below the `holder_dust_units_min` setting is carried forward: a threshold past one fee's
# maximum (a million units of the asset) would hold small holders' money for good, so the setting stops there.
holder_dust_units_min_limit = fee_micros_max

ppm_total = 1_000_000

# A policy or lineage list longer than this is a configuration error, not a real split.
shares_count_max = 256
parents_count_max = 32

# Time stamps before this year are a producer clock error.
event_year_min = 2000

# An envelope `time` further than this ahead of the ingest clock is refused (`time_in_future`):
# the time orders registry records, so a record dated 9999 would otherwise outrank every later one.
# Five minutes covers ordinary clock skew between a gateway and the ingest hosts; the setting
# `event_time_future_s_max` (royalty/config.py) changes it within these bounds. A policy's
# `effective_from` is data, not the envelope time, and may lie in the future.
event_time_future_s_max_default = 300
event_time_future_s_max_limit = 7 * 86_400
# The longest policy notice an operator registry may require (`policy_notice_s`): a year, past which a
# policy change could never take effect within a model's life.
policy_notice_s_max = 366 * 86_400

require(message_bytes_max >= 4096, "a single metering event must fit comfortably")
require(fee_micros_max * 10**8 < 2**127, "a day of maximal fees must fit in a 128-bit sum")
