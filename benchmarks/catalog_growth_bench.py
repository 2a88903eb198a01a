"""What a small transaction costs as a DuckLake catalog gains snapshots, on SQLite and on PostgreSQL.

Every append is one snapshot, and a stream appending once a second makes 86,400 a day. This script commits
transactions shaped like a bookkeeping insert (BEGIN, the first read of the snapshot, one inlined row, COMMIT) on a
plain DuckLake with the ledger's tables (no ledger code), one snapshot each, and at each of `--snapshots` times the
next `--sample` of them: the CPU of this process per step (median), and the wall time. The ledger's own append pays
the same first read and commit (benchmarks/append_floor_bench.py). `royalty expire` is what keeps the count down
(docs/operations.md, "Snapshot expiry").

    python benchmarks/catalog_growth_bench.py --snapshots 1000 10000 20000 --backends sqlite postgres
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from append_bench import _plain_ducklake

from ledger.extensions import extension_directory
from ledger.tables import create_statements, inlining_statements


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snapshots", type=int, nargs="+", default=[1_000, 10_000, 20_000])
    parser.add_argument("--sample", type=int, default=50, help="transactions timed at each count")
    parser.add_argument("--backends", nargs="+", choices=["sqlite", "postgres"], default=["sqlite", "postgres"])
    args = parser.parse_args()
    print(f"load before {os.getloadavg()}; cores {os.cpu_count()}")
    workdir = Path(tempfile.mkdtemp(prefix="catalog-growth-"))
    os.chmod(workdir, 0o777)  # PostgreSQL runs as its own user when this runs as root
    try:
        for backend in args.backends:
            with _catalog(backend, workdir) as connection:
                for statement in create_statements("plain") + inlining_statements("plain"):
                    connection.execute(statement)
                _grow(connection, backend, sorted(args.snapshots), args.sample)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"load after {os.getloadavg()}")


class _catalog:
    """A plain DuckLake named `plain` on `backend`, on one DuckDB thread as the ledger's small appends run."""

    def __init__(self, backend: str, workdir: Path) -> None:
        self.backend, self.workdir, self.server = backend, workdir, None

    def __enter__(self) -> duckdb.DuckDBPyConnection:
        if self.backend == "sqlite":
            self.connection = _plain_ducklake(self.workdir / "sqlite")
        else:
            from tests.support.postgres import PostgresServer

            self.server = PostgresServer(self.workdir / "postgres")
            self.server.start()
            (self.workdir / "pg-data").mkdir()
            options = {"extension_directory": extension_directory(), "autoload_known_extensions": False}
            self.connection = duckdb.connect(config=options)
            self.connection.execute("LOAD ducklake")
            self.connection.execute("LOAD postgres")
            self.connection.execute(
                f"ATTACH 'ducklake:{self.server.catalog_url}' AS plain (DATA_PATH '{self.workdir}/pg-data/')"
            )
        self.connection.execute("SET threads = 1")
        return self.connection

    def __exit__(self, *exc) -> None:
        self.connection.close()
        if self.server is not None:
            self.server.stop()


def _grow(connection: duckdb.DuckDBPyConnection, backend: str, counts: list[int], sample: int) -> None:
    made = 0
    for count in counts:
        started = time.perf_counter()
        while made < count - sample:
            _transaction(connection)
            made += 1
        steps = [_transaction(connection) for _ in range(sample)]
        made += sample
        medians = {name: statistics.median(step[name] for step in steps) * 1000 for name in steps[0]}
        detail = ", ".join(f"{name} {value:.2f}" for name, value in medians.items())
        print(
            f"{backend}: {made:,} snapshots: ms per transaction (CPU median) {detail}; "
            f"growing to it took {time.perf_counter() - started:.0f} s wall; load {os.getloadavg()[0]:.1f}",
            flush=True,
        )


def _transaction(connection: duckdb.DuckDBPyConnection) -> dict[str, float]:
    """One snapshot: BEGIN and the first read of the snapshot, one inlined row, COMMIT; CPU seconds of each, and the
    wall time of the whole."""
    wall, cpu = time.perf_counter(), time.process_time()
    connection.execute("BEGIN TRANSACTION")
    connection.execute("SELECT id FROM plain.current_snapshot()").fetchall()
    first = time.process_time()
    connection.execute("INSERT INTO plain.main.ingest_offset VALUES ('t', 0, 1, 2, 'x')")
    inserted = time.process_time()
    connection.execute("COMMIT")
    committed = time.process_time()
    return {
        "begin + first read": first - cpu,
        "insert": inserted - first,
        "commit": committed - inserted,
        "total": committed - cpu,
        "wall total": time.perf_counter() - wall,
    }


if __name__ == "__main__":
    main()
