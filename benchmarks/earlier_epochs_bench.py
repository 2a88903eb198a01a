"""What a ledger's earlier epochs cost the next close: the check that drops events an earlier epoch stored.

An event is paid once, in the epoch its first copy arrived in: the events path drops the new rows whose (source, id)
an earlier epoch stored (`settlement.ledger_io.stored_before_range`), and the rollup path reads from the events the
cells of every key group whose id range an earlier file's recorded id bounds reach, and drops those copies there
(`settlement.rollups._groups_earlier_files_reach`). Both read earlier epochs' event ids. This bench builds a ledger
epoch by epoch (`--events-per-epoch` events in `--files-per-epoch` files, each added in its own snapshot with its
summed rollups, as appends and compaction leave them; ids grow with arrival) and, once `--checkpoints` earlier
epochs are closed, times a dry-run close of the next epoch from the events and from the rollups (wall and CPU
seconds) and the earlier-id check alone.

    python benchmarks/earlier_epochs_bench.py --checkpoints 1,10,50

`--resend` puts into each measured epoch one copy of an event of epoch 1 (another event time): the check must find
it whatever the ledger's age.
"""

import argparse
import logging
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import polars as pl
from split_bench import events_file, registry, rollups_of

from ledger import IngestBatch, Ledger, PartitionOffsets
from ledger.tables import payer_rollup_table, rollup_table
from schemas import BatchDecoder
from settlement import InputChecks, close_epoch
from settlement.ledger_io import data_files, read_prior, stored_before_range
from settlement.use_cases.ledger_setup import register_with_ledger

# Files added straight to the catalog (no append: no recorded checksums), as split_bench does; a resent event's
# dropped copy shows in its epoch's reconciliation (events_vs_epoch), which the next closes accept.
_bench_files = InputChecks(accept_unverified_files=True, accept_unreconciled=True)


def add_epoch(ledger: Ledger, folder: Path, epoch: int, args: argparse.Namespace, resend: bool) -> None:
    """Write epoch `epoch`'s events (ids after every earlier epoch's) and their rollups, one snapshot per file."""
    per_file = args.events_per_epoch // args.files_per_epoch
    for number in range(args.files_per_epoch):
        first = (epoch - 1) * args.events_per_epoch + number * per_file
        data = folder / "lake" / "data" / "main"
        path = data / "inference_metered" / f"bench-{first}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame = events_file(path, first, per_file, args.models, per_file)
        if resend and number == 0:  # epoch 1's first event again, an hour earlier: stored (ingest probes by time)
            copy = events_file(folder / "copy.parquet", 0, 1, args.models, per_file)
            frame = pl.concat([frame, copy.with_columns(pl.col("event_time") - timedelta(hours=1))])
            frame.write_parquet(path, compression="zstd")
        rollups, payers = rollups_of(frame, first, 0)
        paths = {"inference_metered": path}
        for table, rows in ((rollup_table, rollups), (payer_rollup_table, payers)):
            paths[table] = data / table / f"bench-{first}.parquet"
            paths[table].parent.mkdir(parents=True, exist_ok=True)
            rows.write_parquet(paths[table], compression="zstd")
        connection = ledger.connection
        connection.execute("BEGIN TRANSACTION")  # one snapshot: the events and their rollups, as an append
        for table, added in paths.items():
            connection.execute(f"CALL ducklake_add_data_files('lake', '{table}', ?)", [str(added)])
        connection.execute("COMMIT")


def timed(work) -> tuple[object, float, float]:
    began, began_cpu = time.perf_counter(), time.process_time()
    result = work()
    return result, time.perf_counter() - began, time.process_time() - began_cpu


def measure(ledger: Ledger, earlier: int) -> None:
    """Time the next epoch's dry-run close from the events and from the rollups, and the earlier-id check alone."""
    connection = ledger.connection
    prior = read_prior(connection)
    files = data_files(connection, "inference_metered", ledger.current_snapshot())
    new_files = files.filter(pl.col("snapshot") > prior.closing_snapshot)
    try:  # the earlier files with their recorded id bounds, as the close reads them
        from settlement.ledger_io import earlier_files

        prior_files = earlier_files(connection, files, prior.closing_snapshot, ledger.current_snapshot())
    except ImportError:  # a tree from before it (for a before/after comparison)
        prior_files = files.filter(pl.col("snapshot") <= prior.closing_snapshot)
    new_events = pl.scan_parquet(new_files["path"].to_list()).select("source", "event_id")
    found, check_s, check_cpu_s = timed(lambda: stored_before_range(new_events, prior_files))
    events, events_s, events_cpu_s = timed(lambda: close_epoch(ledger, dry_run=True, checks=_bench_files))
    rolled, rollups_s, rollups_cpu_s = timed(
        lambda: close_epoch(ledger, dry_run=True, checks=_bench_files, from_rollups=True)
    )
    print(
        f"{earlier} earlier epochs ({prior_files.height:,} files): earlier-id check {check_s:.2f} s wall / "
        f"{check_cpu_s:.2f} s CPU ({found.height} stored before); close from events {events_s:.2f} s / "
        f"{events_cpu_s:.2f} s CPU; from rollups {rollups_s:.2f} s / {rollups_cpu_s:.2f} s CPU (cells "
        f"{rolled.rollup_cells}); {events.event_count:,} events, same payable total: "
        f"{events.payable_micros == rolled.payable_micros}",
        flush=True,
    )


def main() -> None:
    logging.getLogger("royalty.settlement").setLevel(logging.ERROR)  # the unverified bench files, accepted
    register_with_ledger()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events-per-epoch", type=int, default=200_000)
    parser.add_argument("--files-per-epoch", type=int, default=20)
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--contributors", type=int, default=1_000)
    parser.add_argument("--checkpoints", default="1,10,50", help="Earlier epochs at which to measure the next close.")
    parser.add_argument("--resend", action="store_true", help="Each measured epoch resends an event of epoch 1.")
    args = parser.parse_args()
    checkpoints = sorted({int(n) for n in args.checkpoints.split(",")})
    folder = Path(tempfile.mkdtemp(prefix="earlier-epochs-bench-"))
    print(f"ledger under {folder}", flush=True)
    with Ledger.open(folder / "lake") as ledger:
        values = registry(args.models, args.contributors)
        batch = IngestBatch.from_messages(
            values, ["r"] * len(values), [0] * len(values), list(range(len(values))), BatchDecoder()
        )
        ledger.append(batch, [PartitionOffsets("r", 0, 0, len(values))])
        for epoch in range(1, checkpoints[-1] + 2):
            add_epoch(ledger, folder, epoch, args, args.resend and epoch - 1 in checkpoints)
            if epoch - 1 in checkpoints:
                measure(ledger, epoch - 1)
            close_epoch(ledger, checks=_bench_files)


if __name__ == "__main__":
    main()
