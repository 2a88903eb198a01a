"""Several writers on one PostgreSQL catalog: append rate and commit conflicts, then `royalty ingest` in a group.

Starts a local PostgreSQL server (Debian's binaries, as the tests do) and measures, for 1, 2 and 3 writers:
  - appends: each writer is a process appending `--appends` batches of `--events` metering events to its
    own partition of one ledger (a fresh database each time, data files in a local folder); reported: appends
    and events per second over all writers, and commit conflicts per 1,000 appends (transactions the ledger
    redid after meeting another writer's commit: `Ledger.commit_retries`);
  - ingest (with `--ingest-events N`): a local Kafka broker, N events in 6 partitions, and 1, 2 and 3
    `royalty ingest --group-id` processes until the stored offsets reach the end offsets; events/s.
On a 2-core machine several writers show the overhead of sharing the catalog, not scaling: say so.

    python benchmarks/writers_bench.py --appends 100 --events 200 [--ingest-events 300000]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

repo_root = Path(__file__).resolve().parent.parent
if str(repo_root) not in sys.path:
    sys.path.insert(0, str(repo_root))  # the tests' PostgreSQL and Kafka servers

from ingest.sample import SampleShape, SampleTraffic  # noqa: E402
from ledger import Ledger  # noqa: E402
from tests.support.postgres import PostgresServer  # noqa: E402

writer_counts = (1, 2, 3)
partitions = 6
# One appending process: its topic, batch count and size on argv; prints its commit retries as JSON.
_appender = """
import json, sys, time
from ingest.sample import SampleShape, SampleTraffic
from ledger import Ledger
from tests.ledger.helpers import batch_of
catalog, data_path, topic, appends, size, start_at = sys.argv[1:7]
appends, size = int(appends), int(size)
values = list(SampleTraffic(SampleShape(), seed=hash(topic) % 1000).metered(appends * size))
with Ledger.open(catalog, data_path) as ledger:
    while time.time() < float(start_at):
        time.sleep(0.001)
    for number in range(appends):
        chunk = values[number * size:(number + 1) * size]
        ledger.append(*batch_of(chunk, topic=topic, first_offset=number * size), writer=topic)
    print(json.dumps({"commit_retries": getattr(ledger, "commit_retries", -1)}))
"""


def _environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(repo_root)}


def appends_with(server: PostgresServer, workdir: Path, writers: int, appends: int, size: int) -> dict:
    """Start `writers` appending processes at one instant; their wall time, appends and commit retries."""
    catalog = server.create_database(f"writers_{uuid.uuid4().hex[:10]}")
    data_path = str(workdir / f"data-{uuid.uuid4().hex[:6]}")
    Ledger.open(catalog, data_path).close()  # created once, as a running deployment's ledger is
    start_at = time.time() + 3
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _appender, catalog, data_path, f"w{number}", str(appends), str(size), str(start_at)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_environment(), cwd=repo_root,
        )
        for number in range(writers)
    ]  # fmt: skip
    retries = 0
    for process in processes:
        output, errors = process.communicate(timeout=3600)
        if process.returncode != 0:
            raise SystemExit(f"an appending process failed:\n{errors[-2000:]}")
        retries += json.loads(output.strip().splitlines()[-1])["commit_retries"]
    elapsed_s = time.time() - start_at
    return {"writers": writers, "appends": writers * appends, "elapsed_s": elapsed_s, "retries": retries}


def ingest_with(server: PostgresServer, workdir: Path, writers: int, events: int) -> float:
    """Seconds for `writers` ingest processes of one group to store `events` events from 6 partitions."""
    from kafka import KafkaProducer

    from tests.support.kafka_broker import KafkaBroker

    broker = KafkaBroker(workdir / f"kafka-{writers}", heap_mb=1024)
    broker.start()
    try:
        topic = "bench-writers"
        broker.create_topic(topic, partitions)
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks=1, linger_ms=50,
                                 batch_size=1024 * 1024)  # fmt: skip
        for value in SampleTraffic(SampleShape(models=1_000, contributors=10_000)).metered(events):
            producer.send(topic, value)
        producer.flush()
        producer.close()
        expected = {(topic, p): end for p, end in broker.end_offsets(topic).items()}
        catalog = server.create_database(f"ingest_{uuid.uuid4().hex[:10]}")
        data_path = str(workdir / f"ingest-data-{writers}")
        Ledger.open(catalog, data_path).close()
        command = [
            sys.executable, "-m", "royalty.cli", "ingest", "--bootstrap-servers", broker.bootstrap_servers,
            "--topic", topic, "--group-id", "bench", "--lake", catalog, "--data-path", data_path,
            "--until-idle-s", "600", "--log-format", "json",
        ]  # fmt: skip
        started = time.perf_counter()
        processes = [
            subprocess.Popen(command, env=_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(writers)
        ]
        try:
            with Ledger.open_read_only(catalog, data_path) as reader:
                while True:
                    reader._reconnect()  # a fresh read of the catalog each time
                    if reader.stored_offsets() == expected:
                        break
                    time.sleep(0.2)
            return time.perf_counter() - started
        finally:
            for process in processes:
                process.terminate()
                process.wait(timeout=60)
    finally:
        broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=100, help="appends per writer")
    parser.add_argument("--events", type=int, default=200, help="events per append")
    parser.add_argument("--ingest-events", type=int, default=0, help="also time royalty ingest in a group (0: no)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="writers-bench-"))
    os.chmod(workdir, 0o777)  # PostgreSQL runs as its own user when this runs as root
    server = PostgresServer(workdir / "postgres")
    server.start()
    print(f"machine: cores={os.cpu_count()} load={os.getloadavg()[0]:.1f} at start; PostgreSQL catalog, local data")
    try:
        baseline = None
        for writers in writer_counts:
            result = appends_with(server, workdir, writers, args.appends, args.events)
            rate = result["appends"] / result["elapsed_s"]
            baseline = baseline or rate
            print(
                f"{writers} writer(s): {result['appends']:,} appends of {args.events:,} "
                f"in {result['elapsed_s']:.1f} s = "
                f"{rate:,.1f} appends/s, {rate * args.events:,.0f} events/s ({rate / baseline:.2f}x one writer); "
                f"commit conflicts redone: {result['retries']:,} ({1000 * result['retries'] / result['appends']:,.1f} "
                f"per 1,000 appends); load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
        if args.ingest_events:
            one = None
            for writers in writer_counts:
                elapsed_s = ingest_with(server, workdir, writers, args.ingest_events)
                rate = args.ingest_events / elapsed_s
                one = one or rate
                print(
                    f"royalty ingest x{writers} (one group, {partitions} partitions): {args.ingest_events:,} events in "
                    f"{elapsed_s:.1f} s = {rate:,.0f} events/s ({rate / one:.2f}x one process); "
                    f"load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
