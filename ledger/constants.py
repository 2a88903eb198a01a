"""Bounds of the ledger package, each with the reason for its value."""

from schemas.errors import require

# SQLite allows one committing writer at a time and DuckLake retries its own commit
# conflicts; past this many whole-transaction retries something is wrong, not busy.
commit_attempts_max = 50
commit_backoff_s_min = 0.01
# Two concurrent writers on one SQLite catalog wait for each other's commit (tens of ms);
# a backoff that never exceeds a second keeps a busy writer responsive to shutdown.
commit_backoff_s_max = 1.0
# DuckLake's own retries of a commit that met another writer's (its default), allowed only for an append whose
# files all reuse column maps this connection committed before (ledger/connection.py says why not otherwise).
ducklake_commit_retries_max = 10

# A dead letter keeps the first this many bytes of its message, with the full size and SHA-256: enough
# to read what broke (an envelope, the start of `data`) without one bad producer of 64 KiB or 1 MiB
# messages filling the disk, and the digest still matches the message in the producer's own logs.
dead_letter_raw_bytes_max = 4 * 1024

# Parquet row groups of this many rows keep files readable in one pass by analysts' tools.
parquet_row_group_rows_max = 1_000_000
parquet_zstd_level = 3
# An append whose file tables hold at least this many rows in all writes their Parquet files on threads (pyarrow's
# writer, the SHA-256 and the file write release the GIL), at most this many at once: an epoch paying a million token
# holders writes 1M postings and 1M payables, then 1M leaves and 64 MB of tree nodes, each file on one core
# otherwise. Smaller appends write in turn (a thread costs more than a small file).
parallel_file_rows_min = 100_000
parallel_files_max = 4
# A file of rows this large (Arrow bytes) is encoded straight into its temporary file on a local data path, then hashed
# from it, not into a buffer first: the buffer's growth faulted in fresh pages, 0.3 s of system time for the 32 MB of
# tree nodes at a million leaves against 0.03 s (benchmarks/RESULTS.md, issue 17). Smaller files keep the one write.
streamed_file_bytes_min = 8 * 1024 * 1024

# DuckLake keeps rows of these small bookkeeping tables in the catalog itself (inlined), so
# every append does not leave a tiny Parquet file per table behind.
inlined_rows_max = 1_000_000

# An inlined table's rows are inserted as SQL literals up to this many rows (an append's offsets, batch, checksums
# and digests: a handful), which costs less CPU than registering them as a relation (ledger.ledger._values_sql);
# more rows (a batch of dead letters read from a file) are registered, where one scan beats a long statement.
inlined_values_rows_max = 64

# Compaction (ledger/compaction.py) leaves files of at least this size alone: a file this large is read at
# disk speed, merging it again would only rewrite it.
compacted_file_bytes_min = 64 * 1024 * 1024
# At most this many files merge into one, so one merge holds a bounded set of paths and one transaction
# stays short; a folder with more merges again on the next run.
compaction_files_per_merge_max = 2_000

# Snapshot expiry (ledger/expiry.py): by default the stream's snapshots younger than an hour are kept (time travel to
# any of them; closing snapshots and every snapshot that did more than append are kept for ever). An hour, not a week:
# every DuckLake transaction on an SQLite catalog reads the whole snapshot table, ~0.4 ms of CPU per 1,000 snapshots
# added to every append (benchmarks/catalog_growth_bench.py), and a week at one append a second is 604,800 of them.
# The retired files an expiry dropped are deleted once scheduled this long ago (a reader that opened an expired
# snapshot before the expiry may still be reading them).
expire_older_than_s_default = 3600.0
expired_files_delete_after_s = 3600.0
# One expiry transaction expires at most this many snapshots, newest first (ledger/expiry.py). DuckLake deletes an
# expiry's catalog rows in one SQLite transaction; once they outgrow SQLite's page cache, each page it spills waits
# out the busy handler on DuckDB's own reader of the catalog: 10,020 snapshots and the 30,005 retired files they
# dropped stalled for over 20 minutes (benchmarks/RESULTS.md, issue 19's long run), and so did runs of 1,000 on that
# ledger (~3,000 files' rows each), while 2,003 snapshots and 6,000 files of a smaller catalog took 4.3 s in one.
# Newest first, each transaction drops the retired files its own snapshots began (oldest first, the last one would
# drop them all at once).
expire_snapshots_per_transaction_max = 250
# The retired files an SQLite catalog's cleanup deletes per transaction of its own (ledger/expiry.py): DuckLake's
# `ducklake_cleanup_old_files` deletes every due file's row in one transaction and stalled the same way on 30,005 of
# them (over 20 minutes, twice); runs of 1,000 on a connection of their own deleted those in 25 s.
cleanup_files_per_transaction_max = 1_000
# How long that connection waits for the catalog's write lock (another writer committing) before it gives up.
cleanup_lock_wait_s = 60.0
# After an expiry, a bookkeeping table's inlined rows move to a checksummed Parquet file of their own
# (ledger/catalog_flush.py) once it holds this many: a flush costs the catalog a data file row and its column
# statistics (~1-2 KB), a thousand inlined rows ~60-500 KB.
bookkeeping_flush_rows_min = 1_000

# An append of at most this many messages runs on one DuckDB thread: its statements are tiny and scheduling
# them on worker threads cost more CPU than they saved (benchmarks/RESULTS.md, small appends). Larger
# batches keep DuckDB's parallel scans for the duplicate check against many stored files.
append_one_thread_messages_max = 10_000

require(commit_backoff_s_min < commit_backoff_s_max, "commit backoff: min < max")
