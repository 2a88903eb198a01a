"""Bounds of the ingest service, each with the reason for its value."""

from schemas.errors import require
from schemas.limits import message_bytes_max

# kafka-python returns at most this many records per poll; a few thousand keeps each poll
# call cheap while letting a 50k-record batch fill in a handful of calls.
poll_records_max = 10_000
poll_timeout_ms_max = 200

# Backoff while the broker is unreachable: quick first retries for a blip, then at most
# every 30 s so an outage of hours does not flood the logs or the network.
broker_backoff_s_min = 0.5
broker_backoff_s_max = 30.0
# A broker never reached since the service started is more likely a wrong address than an outage: past this
# long (setting `broker_unreachable_s_max`) the service exits 75 naming the servers, so the mistake shows and
# a supervisor retries. Once connected, outages are retried without bound (they end).
broker_unreachable_s_max_default = 300
broker_unreachable_s_max_limit = 86_400

# A ledger that fails (catalog unreachable, disk full or read-only, busy past the ledger's own
# retries) is retried with the same batch: quickly at first for a blip, then at most every
# 30 s, like the broker, so an outage of hours does not flood the logs or the catalog.
ledger_backoff_s_min = 0.5
ledger_backoff_s_max = 30.0
# Past this much continuous failure the service exits non-zero with the last error, so that a
# supervisor alerts someone and restarts it; a restart resumes from the ledger's offsets.
ledger_failing_s_max = 15 * 60.0
# How often a backoff sleep checks for SIGTERM, so a stop request is honoured promptly.
stop_check_s = 0.25

progress_log_interval_s = 5.0

# The largest batch an operator may configure: a batch is held in memory twice (raw bytes
# and Arrow), so 1M messages of ~400 bytes stay under a gigabyte.
batch_records_max_limit = 1_000_000

require(broker_backoff_s_min < broker_backoff_s_max, "broker backoff: min < max")
require(ledger_backoff_s_min < ledger_backoff_s_max < ledger_failing_s_max, "ledger backoff: min < max < give-up")
require(stop_check_s <= ledger_backoff_s_min, "a backoff sleep checks for a stop request at least once")
require(poll_records_max <= batch_records_max_limit, "one poll fits in the largest batch")

# A file's prefix is hashed in chunks of this size when it is matched against recorded sources.
file_hash_chunk_bytes = 1024 * 1024

# A batch also stops at a byte budget (setting `batch_bytes_max`): 3,000 messages of 64 KiB took
# 846 MB of memory in one batch (about 4.4 bytes held per byte read), so 50,000 would take ~14 GB and
# an out-of-memory kill would re-read the same batch forever. 64 MiB holds 50,000 typical messages of
# ~400 bytes with room to spare, and keeps a batch of large messages under ~300 MB.
batch_bytes_max_default = 64 * 1024 * 1024
batch_bytes_max_limit = 1024 * 1024 * 1024

# A file line longer than any message may be (schemas.limits.message_bytes_max) is a dead letter whatever
# it holds: only this many of its first bytes are held, the rest is read through (hashed and counted),
# so one endless line cannot exhaust memory and be read again, and again, after each crash.
file_line_bytes_held_max = message_bytes_max + 1
