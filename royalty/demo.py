"""`royalty demo`: the whole pipeline on embedded defaults, for a newcomer with Python and pip.

Stages: start the embedded Kafka-compatible broker (or use `--kafka`), produce sample traffic
with some duplicates and invalid messages, ingest it until idle, close the epoch, and print a
summary whose figures are re-read from the ledger with the same SQL a user would run.
"""

import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ingest.producer import produce_sample_traffic
from ingest.service import IngestService
from ingest.sources import KafkaSource
from ledger import Ledger, define_views, run_query

demo_topic = "inference-events"
# The service stops once the topic has been quiet this long after the last message.
ingest_idle_s = 3.0


@dataclass
class DemoResult:
    """The demo's figures, each re-read from the ledger."""

    workdir: Path
    lake: Path
    produced: dict[str, int] = field(default_factory=dict)
    figures: dict[str, int] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)


@contextmanager
def _broker(kafka: str | None) -> Iterator[str]:
    if kafka is not None:
        yield kafka
        return
    from ingest.embedded_broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        yield broker.bootstrap_servers


def run_demo(workdir: Path | None, events: int, kafka: str | None, console: Console) -> DemoResult:
    """Run every stage; return the figures. Cleans up the broker it started."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix="royalty-demo-"))
    lake = workdir / "lake"
    if lake.exists():
        shutil.rmtree(lake)
    workdir.mkdir(parents=True, exist_ok=True)
    result = DemoResult(workdir, lake)
    columns = (
        TextColumn("{task.description:<28}"),
        BarColumn(),
        TextColumn("{task.completed:>9,}"),
        TimeElapsedColumn(),
    )
    with _broker(kafka) as bootstrap_servers, Progress(*columns, console=console) as progress:
        if kafka is not None:
            _create_topic(bootstrap_servers)
        started = time.monotonic()
        task = progress.add_task("produce sample traffic", total=events)
        result.produced = produce_sample_traffic(
            events,
            bootstrap_servers,
            demo_topic,
            None,
            on_progress=lambda done: progress.update(task, completed=done),
        )
        progress.update(task, completed=events)
        result.stage_seconds["produce"] = time.monotonic() - started

        started = time.monotonic()
        total_messages = sum(result.produced.values())
        task = progress.add_task("ingest into the ledger", total=total_messages)
        with Ledger.open(lake) as ledger:
            service = IngestService(
                ledger,
                lambda owner: KafkaSource(bootstrap_servers, [demo_topic], None, ledger.stored_offsets),
                "USDC",
                50_000,
                500,
                "demo",
                on_committed=lambda summary: progress.update(task, completed=summary.messages),
            )
            service.run(until_idle_s=ingest_idle_s)
            result.stage_seconds["ingest"] = time.monotonic() - started

            from settlement import close_epoch

            started = time.monotonic()
            task = progress.add_task("close epoch 1", total=5)
            close_epoch(ledger, progress=lambda step, done, total: progress.update(task, completed=done))
            result.stage_seconds["close epoch"] = time.monotonic() - started
    result.figures = summary_figures(lake)
    return result


def summary_queries() -> dict[str, str]:
    """The SQL behind each summary figure; a user can run each with `royalty sql`."""
    return {
        "events in the ledger": "SELECT count(*) FROM inference_events",
        "fees (micros)": "SELECT coalesce(sum(fee_micros), 0) FROM inference_events",
        "dead letters": "SELECT count(*) FROM dead_letters",
        "duplicates dropped": "SELECT coalesce(sum(duplicates), 0) FROM ingest_batches",
        "epochs closed": "SELECT count(*) FROM epochs",
        "payable (micros)": "SELECT coalesce(sum(amount_micros), 0) FROM payables",
        "recipients paid": "SELECT count(DISTINCT recipient) FROM payables",
    }


def summary_figures(lake: Path) -> dict[str, int]:
    with Ledger.open_read_only(lake) as reader:
        define_views(reader)
        return {name: int(run_query(reader, sql).column(0)[0].as_py()) for name, sql in summary_queries().items()}


def render_demo(result: DemoResult, console: Console) -> None:
    table = Table(title="royalty demo", show_header=True)
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, count in result.produced.items():
        table.add_row(f"produced: {name}", f"{count:,}")
    for name, value in result.figures.items():
        table.add_row(name, f"{value:,}")
    console.print(table)
    console.print(
        "timings: " + ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in result.stage_seconds.items())
    )
    console.print(f"ledger: {result.lake}\nnext, try:")
    console.print(
        f'  royalty sql --lake {result.lake} "SELECT model_id, sum(fee_micros) AS fees_micros '
        'FROM inference_events GROUP BY ALL ORDER BY fees_micros DESC LIMIT 10"',
        highlight=False,
    )
    console.print(
        f'  royalty sql --lake {result.lake} "SELECT reason, count(*) FROM dead_letters GROUP BY ALL"', highlight=False
    )
    console.print(f"  royalty verify --lake {result.lake}", highlight=False)


def _create_topic(bootstrap_servers: str) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers)
    try:
        admin.create_topics([NewTopic(demo_topic, 6, 1)])
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()
