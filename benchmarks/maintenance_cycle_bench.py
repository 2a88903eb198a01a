"""What the hourly upkeep of a ledger in service costs: appends, then `compact` and `expire`, in cycles.

docs/operations.md says to compact and expire about hourly. This appends `--appends-per-cycle` small appends (one an
hour at one append a second: 3,600) to an existing ledger, then runs `royalty compact --older-than-s 0` and `royalty
expire --older-than-s 0` on it, and times each step, `verify` after it, and the appends; `--cycles` times over. The
events come from their own topic and seed, so any ledger takes them (e.g. the small ledger `longrun_bench.py
--workdir W` leaves behind, already compacted and expired):

    python benchmarks/maintenance_cycle_bench.py --lake W/small --cycles 2 --appends-per-cycle 3600

The ledger is changed: run it on a copy you can lose.
"""

import argparse
import json
import random
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

from ingest.sample import SampleShape, SampleTraffic
from ledger import IngestBatch, Ledger, PartitionOffsets, recorder
from ledger.compaction import compact
from ledger.expiry import expire
from ledger.verify import verify
from schemas import BatchDecoder
from settlement.use_cases.ledger_setup import register_with_ledger

topic = "maintenance-bench"


def _offset_next(ledger: Ledger) -> int:
    ((offset,),) = ledger.connection.execute(
        f"SELECT coalesce(max(next_offset), 0) FROM {recorder.table('ingest_offset')} WHERE kafka_topic = ?", [topic]
    ).fetchall()
    return int(offset)


def _cycle(ledger: Ledger, traffic: SampleTraffic, sizes: list[int], taken: int, decoder: BatchDecoder) -> dict:
    offset = _offset_next(ledger)
    cpu_ms, wall_ms = [], []
    for size in sizes:
        values = list(traffic.metered(size, taken))
        taken += size
        positions = list(range(offset, offset + size))
        batch = IngestBatch.from_messages(values, [topic] * size, [0] * size, positions, decoder)
        wall, cpu = time.perf_counter(), time.process_time()
        ledger.append(batch, [PartitionOffsets(topic, 0, offset, offset + size)])
        cpu_ms.append((time.process_time() - cpu) * 1000)
        wall_ms.append((time.perf_counter() - wall) * 1000)
        offset += size
    started = time.perf_counter()
    compacted = compact(ledger, older_than_s=0)
    compact_s = time.perf_counter() - started
    started = time.perf_counter()
    expired = expire(ledger, older_than_s=0, delete_files_after_s=0)
    expire_s = time.perf_counter() - started
    started = time.perf_counter()
    report = verify(ledger)
    verify_s = time.perf_counter() - started
    return {
        "events": taken,
        "appends": len(sizes),
        "append_cpu_ms_median": round(statistics.median(cpu_ms), 1),
        "append_wall_ms_median": round(statistics.median(wall_ms), 1),
        "compact_s": round(compact_s, 2),
        "merges": compacted.merges,
        "files_retired": compacted.files_retired,
        "expire_s": round(expire_s, 2),
        "snapshots_expired": expired.snapshots_expired,
        "files_dropped": expired.files_dropped,
        "rows_flushed": expired.rows_flushed,
        "verify_s": round(verify_s, 3),
        "verify_ok": report.ok,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", type=Path, required=True, help="an existing ledger (changed: use a copy)")
    parser.add_argument("--cycles", type=int, default=2)
    parser.add_argument("--appends-per-cycle", type=int, default=3_600)
    parser.add_argument("--events-per-append", type=int, default=100, help="the least")
    parser.add_argument("--events-per-append-max", type=int, default=1_000, help="the most (uniform between)")
    parser.add_argument("--seed", type=int, default=29)
    parser.add_argument(
        "--start-date", type=lambda text: datetime.fromisoformat(text).replace(tzinfo=UTC),
        default=datetime(2026, 12, 4, tzinfo=UTC), help="the first event's date (the ledger's others are earlier)",
    )  # fmt: skip
    args = parser.parse_args()
    register_with_ledger()
    rng = random.Random(args.seed)
    # Event dates of their own (compaction merges files per event date): from --start-date, 5M events a day.
    shape = SampleShape(models=100, contributors=1_000, events_per_day=5_000_000, start=args.start_date)
    traffic = SampleTraffic(shape, seed=args.seed)
    decoder = BatchDecoder()
    taken = 0
    cycles = []
    with Ledger.open(args.lake) as ledger:
        registry = list(traffic.registry())
        offset = _offset_next(ledger)
        positions = list(range(offset, offset + len(registry)))
        batch = IngestBatch.from_messages(registry, [topic] * len(registry), [0] * len(registry), positions, decoder)
        ledger.append(batch, [PartitionOffsets(topic, 0, offset, offset + len(registry))])
        for number in range(1, args.cycles + 1):
            sizes = [
                rng.randint(args.events_per_append, args.events_per_append_max) for _ in range(args.appends_per_cycle)
            ]
            figures = {"cycle": number, **_cycle(ledger, traffic, sizes, taken, decoder)}
            taken = figures["events"]
            cycles.append(figures)
            print(json.dumps(figures), flush=True)
    print(json.dumps({"command": "maintenance_cycle_bench", "cycles": cycles}, indent=2))


if __name__ == "__main__":
    main()
