"""What opening a ledger costs, with the extensions' signatures checked at every connection or once.

Run from the repository root:

    python benchmarks/ledger_open_bench.py [--opens 10] [--processes 3]

In one process: the CPU and wall seconds of `Ledger.open_read_only` on an existing ledger, when every connection has
DuckDB check the extensions' signatures (the baseline, as before `ledger/extensions.py`) and when each file is
checked once per process. Across processes: `royalty verify --lake L` in fresh processes with an empty cache folder
(each process checks, as before) and with the record a first process left (later ones do not). Prints the load.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ledger import Ledger, extensions


def _opens(lake: Path, count: int, check_every_time: bool) -> tuple[float, float]:
    """Median wall and CPU seconds of one read-only open and close of `lake`."""
    walls, cpus = [], []
    for _ in range(count):
        if check_every_time:
            extensions._checked.clear()
        started, cpu = time.perf_counter(), time.process_time()
        with Ledger.open_read_only(str(lake)):
            pass
        walls.append(time.perf_counter() - started)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def _verify_processes(lake: Path, count: int, cache: Path, keep_record: bool) -> tuple[float, float]:
    """Median wall and CPU (user + system) seconds of `royalty verify` in a fresh process."""
    walls, cpus = [], []
    for _ in range(count):
        if not keep_record:
            for record in cache.glob("royalty-engine/checked-extension-files-*.json"):
                record.unlink()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "royalty.cli", "verify", "--lake", str(lake)],
            check=True, capture_output=True, env={**os.environ, "XDG_CACHE_HOME": str(cache)},
        )  # fmt: skip
        walls.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--opens", type=int, default=10)
    parser.add_argument("--processes", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: cores={os.cpu_count()} load={os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="ledger-open-bench-") as folder:
        lake, cache = Path(folder) / "lake", Path(folder) / "cache"
        with Ledger.open(str(lake)):
            pass
        every_wall, every_cpu = _opens(lake, args.opens, check_every_time=True)
        once_wall, once_cpu = _opens(lake, args.opens, check_every_time=False)
        print(f"open, signatures checked at each connection (baseline): {every_wall:.3f} s wall, {every_cpu:.3f} s CPU")
        print(f"open, each file checked once per process:             {once_wall:.3f} s wall, {once_cpu:.3f} s CPU")
        print(f"ratio (CPU): {every_cpu / once_cpu:.1f}x")
        fresh_wall, fresh_cpu = _verify_processes(lake, args.processes, cache, keep_record=False)
        kept_wall, kept_cpu = _verify_processes(lake, args.processes, cache, keep_record=True)
        print(f"`royalty verify`, every process checks (baseline):      {fresh_wall:.3f} s wall, {fresh_cpu:.3f} s CPU")
        print(f"`royalty verify`, with the record of a checked file:    {kept_wall:.3f} s wall, {kept_cpu:.3f} s CPU")
        print(f"ratio (CPU): {fresh_cpu / kept_cpu:.2f}x")
    print(f"load at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
