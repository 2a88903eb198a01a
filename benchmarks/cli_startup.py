"""Start-up time of the `royalty` CLI: `royalty --help` and each subcommand's `--help`, each in a fresh process.

Run from the repository root:

    python benchmarks/cli_startup.py [--repeat 5] [--commands ingest,close-epoch]

Prints, per command line, the median and the fastest wall time of `--repeat` runs, the median CPU time (user +
system, less sensitive to other load on the machine), and the modules that took longest to import in one
`python -X importtime` run of `royalty --help`. The load average is printed too: wall times on a busy
machine say little. tests/test_cli_startup.py checks the structure (no heavy module imported for a help),
never a time.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

default_commands = ("", "ingest", "produce-sample", "close-epoch", "settle", "sql", "report", "demo")


def run_once(arguments: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of one `python -m royalty.cli ARGS --help`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "royalty.cli", *arguments, "--help"], check=True, capture_output=True)
    wall_s = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall_s, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def slowest_imports(count: int) -> list[tuple[int, str]]:
    """(cumulative µs, module) of the top-level imports of `royalty --help`, slowest first."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "royalty.cli", "--help"], capture_output=True, text=True
    )
    rows = []
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line.removeprefix("import time:").split("|")
        if not name.startswith("  "):  # top level only: the children are inside the parent's figure
            rows.append((int(cumulative), name.strip()))
    return sorted(rows, reverse=True)[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="Runs per command line.")
    parser.add_argument("--commands", default=",".join(default_commands), help="Comma-separated subcommands.")
    args = parser.parse_args()
    print(
        f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}; "
        f"{args.repeat} runs each"
    )
    print(f"{'command':<32} {'median wall s':>14} {'fastest wall s':>15} {'median cpu s':>13}")
    for command in args.commands.split(","):
        arguments = [command] if command else []
        runs = [run_once(arguments) for _ in range(args.repeat)]
        walls, cpus = [wall for wall, _ in runs], [cpu for _, cpu in runs]
        label = f"royalty {command} --help".replace("  ", " ")
        print(f"{label:<32} {statistics.median(walls):>14.3f} {min(walls):>15.3f} {statistics.median(cpus):>13.3f}")
    print("slowest top-level imports of `royalty --help` (cumulative):")
    for cumulative_us, module in slowest_imports(8):
        print(f"  {cumulative_us / 1000:>8.1f} ms  {module}")


if __name__ == "__main__":
    main()
