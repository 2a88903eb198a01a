"""`royalty demo`: the whole pipeline on embedded defaults, for a newcomer with Python and pip.

Stages: start the embedded Kafka-compatible broker (or use `--kafka`), produce sample traffic
with some duplicates and invalid messages, ingest it until idle, close the epochs, deploy the
distributor on the in-process chain (or `--rpc-url`), settle the latest root, claim for the two largest
payees, write the settlement report, and print a summary whose ledger figures are re-read with
the same SQL a user would run.

On the in-process chain the registry is on-chain (docs/registry.md) and the story spans four days in two epochs
(`royalty.demo_history`): the chain's history starts four days back, a ModelRegistry and a holder token are
deployed there, the traffic runs over the days, a policy changes mid-history, a contributor moves its payout address
between the epochs; before each close the registry and the token's transfers are synced (`sync-registry`,
`sync-holders`) and the epoch is closed in on-chain mode (the sample's registry records on Kafka are ignored).
With `--rpc-url` it keeps the operator registry (Kafka) and one epoch.
"""

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ingest.producer import sample_messages
from ingest.service import IngestService
from ingest.sources import KafkaSource
from ledger import Ledger, define_views, run_query
from royalty.demo_history import Timeline, first_days, last_days
from royalty.exceptions import DemoWorkdirError
from settlement.onchain import (
    Chain,
    connect,
    deploy_contracts,
    distributor_contract,
    largest_leaves,
    load_signer,
    require_embedded_chain,
    token_contract,
    transact,
)
from settlement.use_cases.close_epoch import close_epoch
from settlement.use_cases.settle import settle
from settlement.use_cases.sync_claims import sync_claims
from settlement.use_cases.sync_holders import holder_token_contract, sync_holders
from settlement.use_cases.sync_registry import sync_registry
from settlement.use_cases.write_report import write_report

demo_topic = "inference-events"
# The service stops once the topic has been quiet this long after the last message.
ingest_idle_s = 3.0
# Test tokens minted to the settler on the local chain: far more than any demo's payables.
demo_mint_units = 10**18
claims_count = 2
# The sample's population (produce_sample_traffic's defaults): the on-chain registry mirrors its registry.
sample_models, sample_contributors, sample_seed = 20, 200, 7
# Duplicates, conflicting resends and invalid messages, ppm of the sample's calls (produce_sample_traffic's).
sample_mistakes_ppm = (10_000, 1_000, 10_000)
# On the in-process chain the traffic spans several days in two epochs: the first holds this share of the calls.
epoch_one_events_ppm = 500_000


@dataclass
class DemoResult:
    """The demo's figures, each re-read from the ledger."""

    workdir: Path
    lake: Path
    produced: dict[str, int] = field(default_factory=dict)
    figures: dict[str, int] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    chain: dict[str, object] = field(default_factory=dict)
    claims: list[tuple[str, int, int]] = field(default_factory=list)
    report: Path | None = None
    # (reason_code, dead letters), largest first: they sum to the `dead letters` figure.
    dead_letters_by_reason: list[tuple[str, int]] = field(default_factory=list)


@contextmanager
def _broker(kafka: str | None) -> Iterator[str]:
    if kafka is not None:
        yield kafka
        return
    from ingest.embedded_broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        yield broker.bootstrap_servers


def run_demo(
    workdir: Path | None,
    events: int,
    kafka: str | None,
    rpc_url: str | None,
    console: Console,
    force: bool = False,
) -> DemoResult:
    """Run every stage; return the figures. Cleans up the broker it started.

    A workdir that already holds `lake/` is refused (`DemoWorkdirError`) unless `force`.
    """
    if rpc_url is None:
        require_embedded_chain()  # before any work, not after ingesting and closing the epoch
    workdir = Path(workdir or tempfile.mkdtemp(prefix="royalty-demo-"))
    lake = workdir / "lake"
    if lake.exists() or lake.is_symlink():
        if not force:
            raise DemoWorkdirError(lake)
        if lake.is_dir() and not lake.is_symlink():
            shutil.rmtree(lake)
        else:
            lake.unlink()  # a link or a file: the demo's ledger is made in its place, the target is kept
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
        run = _Run(result, bootstrap_servers, progress)
        with Ledger.open(lake) as ledger:
            if rpc_url is None:
                chain, epoch = _run_history(run, ledger, events)
            else:
                chain, epoch = _run_one_epoch(run, ledger, events, rpc_url)
            _settle_claim_report(run, ledger, chain, epoch, workdir)
    result.figures = summary_figures(lake)
    result.dead_letters_by_reason = dead_letters_by_reason(lake)
    return result


@dataclass
class _Run:
    """What the stages share: the result they fill, the broker, the progress display."""

    result: DemoResult
    bootstrap_servers: str
    progress: Progress
    ingested: int = 0  # messages produced before the last ingest run

    def stage(self, name: str, started: float) -> None:
        self.result.stage_seconds[name] = self.result.stage_seconds.get(name, 0.0) + time.monotonic() - started


def _run_one_epoch(run: _Run, ledger: Ledger, events: int, rpc_url: str) -> tuple[Chain, int]:
    """`--rpc-url`: the sample with its operator registry (Kafka) in one epoch."""
    messages = sample_messages(events, *sample_mistakes_ppm, sample_models, sample_contributors, sample_seed)
    story = story_messages(events, False, None)
    _produce(run, "produce sample traffic", messages, events, story)
    _ingest(run, ledger, "ingest into the ledger")
    started = time.monotonic()
    task = run.progress.add_task("close epoch 1", total=5)
    close_epoch(ledger, progress=lambda step, done, total: run.progress.update(task, completed=done))
    run.stage("close epoch", started)
    return connect(rpc_url, load_signer(None)), 1


def _run_history(run: _Run, ledger: Ledger, events: int) -> tuple[Chain, int]:
    """The in-process chain with several days of history (`royalty.demo_history`), in two epochs: the first
    closed at `Timeline.epoch_one_end`, the second after the payout address change, shortly before now."""
    now = int(time.time())
    epoch_one_events = events * epoch_one_events_ppm // 1_000_000
    timeline = Timeline.plan(now, events, epoch_one_events)
    started = time.monotonic()
    task = run.progress.add_task("write the chain's first days", total=sample_models)
    demo = first_days(
        timeline,
        sample_models,
        sample_contributors,
        sample_seed,
        lambda done: run.progress.update(task, completed=done),
    )
    run.result.chain |= {"registry": demo.registry.address, "holder token": demo.token.address}
    run.stage("chain history", started)
    messages = sample_messages(
        events, *sample_mistakes_ppm, sample_models, sample_contributors, sample_seed, True, timeline.timing
    )
    first, second = _split_at_event(messages, epoch_one_events)
    story = story_messages(events, True, timeline.timing)
    # A refund goes with the call it refunds (same time), so it never arrives an epoch before it.
    story_first = [m for m in story if _event_time_us(m) < timeline.epoch_two_start_us]
    story_second = [m for m in story if _event_time_us(m) >= timeline.epoch_two_start_us]
    for epoch, (messages_of, story_of) in enumerate(((first, story_first), (second, story_second)), start=1):
        if epoch == 2:
            started = time.monotonic()
            demo_chain = last_days(demo, now)  # the payout address change, more trades, then live blocks
            run.stage("chain history", started)
        count = epoch_one_events if epoch == 1 else events - epoch_one_events
        _produce(run, f"produce days of epoch {epoch}", messages_of, count, story_of)
        _ingest(run, ledger, f"ingest epoch {epoch}")
        started = time.monotonic()
        task = run.progress.add_task(f"sync the chain, close epoch {epoch}", total=5)
        # as `royalty sync-registry` and `royalty sync-holders` would, up to the newest block
        sync_registry(ledger, demo.chain, demo.registry, from_block=0)
        sync_holders(ledger, demo.chain, holder_token_contract(demo.chain, demo.token.address))
        close_epoch(
            ledger,
            progress=lambda step, done, total, task=task: run.progress.update(task, completed=done),
            registry_contract=demo.registry.address,
        )
        run.stage("close epochs", started)
    run.result.chain["payout address change"] = f"{demo.moved_account.address} -> {demo.new_payout}"
    return demo_chain, 2


def _settle_claim_report(run: _Run, ledger: Ledger, chain: Chain, epoch: int, workdir: Path) -> None:
    """Deploy the distributor, settle the latest epoch, claim for the largest payees, write the report."""
    started = time.monotonic()
    progress, result = run.progress, run.result
    task = progress.add_task("deploy, settle, claim", total=4)
    deployed = deploy_contracts(chain, timelock_seconds=0, mint_units=demo_mint_units)
    distributor = distributor_contract(chain, deployed.distributor)
    progress.update(task, completed=1)
    settled = settle(ledger, chain, distributor, tree_dir=workdir / "trees", from_block=deployed.deployment_block)
    progress.update(task, completed=2)
    result.chain |= {
        "chain id": chain.chain_id,
        "distributor": deployed.distributor,
        "root": settled.root or "",
        "settle tx": settled.tx_hash or "",
    }
    result.claims = _claim_top_payees(ledger, chain, distributor, settled.epoch or epoch, claims_count)
    # as `royalty sync-claims` would: the `claims` view
    sync_claims(ledger, chain, distributor, from_block=deployed.deployment_block)
    progress.update(task, completed=3)
    result.report = workdir / "report.html"
    write_report(ledger, settled.epoch or epoch, result.report)
    progress.update(task, completed=4)
    run.stage("settle, claim, report", started)


def _split_at_event(
    messages: Iterator[tuple[str, bytes]], first_events: int
) -> tuple[Iterator[tuple[str, bytes]], Iterator[tuple[str, bytes]]]:
    """The (kind, message) pairs before the sample's call number `first_events`, and the rest (read the first
    iterator to its end before the second)."""
    carried: list[tuple[str, bytes]] = []

    def first() -> Iterator[tuple[str, bytes]]:
        seen = 0
        for kind, message in messages:
            if kind == "event":
                if seen == first_events:
                    carried.append((kind, message))
                    return
                seen += 1
            yield kind, message

    def second() -> Iterator[tuple[str, bytes]]:
        yield from carried
        yield from messages

    return first(), second()


def _event_time_us(message: bytes) -> int:
    at = datetime.fromisoformat(json.loads(message)["time"])
    return (at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


class _Identity(msgspec.Struct):
    id: str | None = None


def _message_key(message: bytes) -> bytes | None:
    """The event id, as gateways key their messages (an event and its resends share a partition)."""
    try:
        event_id = msgspec.json.decode(message, type=_Identity).id
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return event_id.encode() if event_id else None


def _produce(run: _Run, name: str, messages: Iterator[tuple[str, bytes]], events: int, story: list[bytes]) -> None:
    """Send the sample's messages (counted by kind into the result) and the story's to the demo topic."""
    from kafka import KafkaProducer

    started = time.monotonic()
    task = run.progress.add_task(name, total=events)
    counts = run.result.produced
    producer = KafkaProducer(
        bootstrap_servers=run.bootstrap_servers.split(","), acks="all", linger_ms=20, batch_size=1024 * 1024
    )
    try:
        for kind, message in messages:
            producer.send(demo_topic, message, key=_message_key(message))
            counts[kind] = counts.get(kind, 0) + 1
            if kind == "event" and counts["event"] % 5_000 == 0:
                run.progress.update(task, advance=5_000)
        for message in story:
            producer.send(demo_topic, message, key=_message_key(message))
        producer.flush()
    finally:
        producer.close()
    counts["story"] = counts.get("story", 0) + len(story)
    run.progress.update(task, completed=events)
    run.stage("produce", started)


def _ingest(run: _Run, ledger: Ledger, name: str) -> None:
    """Ingest until the topic has been quiet `ingest_idle_s` (resuming at the offsets the ledger stored)."""
    started = time.monotonic()
    produced = sum(run.result.produced.values())
    task = run.progress.add_task(name, total=produced - run.ingested)
    service = IngestService(
        ledger,
        lambda owner: KafkaSource(run.bootstrap_servers, [demo_topic], None, ledger.stored_offsets),
        "USDC",
        50_000,
        500,
        "demo",
        on_committed=lambda summary: run.progress.update(task, completed=summary.messages),
    )
    service.run(until_idle_s=ingest_idle_s)
    run.progress.update(task, completed=produced - run.ingested)  # the topic is quiet: everything produced is in
    run.ingested = produced
    run.stage("ingest", started)


def _claim_top_payees(ledger: Ledger, chain, distributor, epoch: int, count: int) -> list[tuple[str, int, int]]:
    """Claim for the `count` largest payees; return (account, cumulative units, token balance after)."""
    token = token_contract(chain, distributor)
    claims = []
    for account, cumulative_units, proof in largest_leaves(ledger, epoch, count):
        call = distributor.functions.claim(account, int(cumulative_units), [bytes.fromhex(p[2:]) for p in proof])
        transact(chain, call, f"claim for {account}")
        claims.append((account, int(cumulative_units), int(token.functions.balanceOf(account).call())))
    return claims


def summary_queries() -> dict[str, str]:
    """The SQL behind each summary figure; a user can run each with `royalty sql`."""
    return {
        "events in the ledger": "SELECT count(*) FROM inference_events",
        "fees (micros)": "SELECT coalesce(sum(fee_micros), 0) FROM inference_events",
        "dead letters": "SELECT count(*) FROM dead_letters",
        "duplicates dropped": "SELECT coalesce(sum(duplicates), 0) FROM ingest_batches",
        "epochs closed": "SELECT count(*) FROM epochs",
        "reversals settled": "SELECT coalesce(sum(reversal_count), 0) FROM epochs",
        "calls held in suspense": "SELECT count(*) FROM suspense_items WHERE released_epoch IS NULL",
        "payable (micros)": "SELECT coalesce(sum(amount_micros), 0) FROM payables",
        "recipients paid": "SELECT count(DISTINCT recipient) FROM payables",
        "roots settled on-chain": "SELECT count(*) FROM settlements",
        "claims read back from the chain": "SELECT count(*) FROM claims",
        "reconciliation rows off (must be 0)": "SELECT count(*) FROM reconciliation "
        "WHERE items_off <> 0 OR difference_micros <> 0",
    }


# Reversals and calls to a model nobody registered, on top of the sample, so that the reversal and suspense
# sections of the report and their documented queries show rows.
story_reversals_max = 20
story_unregistered_calls = 5
unregistered_model = "model-unregistered"


def story_messages(events: int, provider_addresses: bool, timing: tuple[datetime, int] | None) -> list[bytes]:
    """Refunds of a few of the sample's calls (from the calls' own source, which may reverse them) and calls to
    `unregistered_model`, whose fees wait in suspense; every time is a sample call's, so none is in the future."""
    metered = [
        message
        for kind, message in sample_messages(
            events, 0, 0, 0, sample_models, sample_contributors, sample_seed, provider_addresses, timing
        )
        if kind == "event"
    ]
    reversed_calls = metered[:: max(1, len(metered) // story_reversals_max)][:story_reversals_max]
    story = []
    for index, call in enumerate(reversed_calls):
        original = json.loads(call)
        story.append(
            _story_event(
                original,
                "ai.inference.reversed.v1",
                f"demo-refund-{index}",
                {"original_event_id": original["id"], "reason": "refund"},
            )
        )
    for index, call in enumerate(metered[-story_unregistered_calls:]):
        original = json.loads(call)
        story.append(
            _story_event(
                original,
                original["type"],
                f"demo-unregistered-{index}",
                {**original["data"], "model_id": unregistered_model, "request_id": f"req_unregistered_{index}"},
            )
        )
    return story


def _story_event(original: dict, event_type: str, event_id: str, data: dict) -> bytes:
    event = {**original, "type": event_type, "id": event_id, "data": data}
    return json.dumps(event, separators=(",", ":")).encode()


def summary_figures(lake: Path) -> dict[str, int]:
    with Ledger.open_read_only(lake) as reader:
        define_views(reader)
        return {name: int(run_query(reader, sql).column(0)[0].as_py()) for name, sql in summary_queries().items()}


dead_letters_by_reason_sql = (
    "SELECT reason_code, count(*) AS dead_letters FROM dead_letters GROUP BY ALL "
    "ORDER BY dead_letters DESC, reason_code"
)


def dead_letters_by_reason(lake: Path) -> list[tuple[str, int]]:
    """The dead letters by `reason_code` (a closed list, schemas.reason_codes), as `royalty sql` gives them."""
    with Ledger.open_read_only(lake) as reader:
        define_views(reader)
        rows = run_query(reader, dead_letters_by_reason_sql).to_pylist()
    return [(row["reason_code"], int(row["dead_letters"])) for row in rows]


def render_demo(result: DemoResult, console: Console) -> None:
    table = Table(title="royalty demo", show_header=True)
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, count in result.produced.items():
        table.add_row(f"produced: {name}", f"{count:,}")
    for name, value in result.figures.items():
        table.add_row(name, f"{value:,}")
    console.print(table)
    if result.dead_letters_by_reason:
        reasons = Table(title="dead letters by reason_code", show_header=True)
        reasons.add_column("reason_code")
        reasons.add_column("dead letters", justify="right")
        for code, count in result.dead_letters_by_reason:
            reasons.add_row(code, f"{count:,}")
        reasons.add_row("total", f"{sum(count for _, count in result.dead_letters_by_reason):,}", style="bold")
        console.print(reasons)
    for name, value in result.chain.items():
        console.print(f"{name}: {value}", highlight=False, soft_wrap=True)
    for account, cumulative_units, balance_units in result.claims:
        console.print(
            f"claimed {account}: cumulative {cumulative_units:,} units, token balance now {balance_units:,}",
            highlight=False,
            soft_wrap=True,
        )
    if result.report is not None:
        console.print(f"settlement report: {result.report}", highlight=False)
    console.print(
        "timings: " + ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in result.stage_seconds.items())
    )
    console.print(f"ledger: {result.lake}\nnext, try:")
    console.print(
        f'  royalty sql --lake {result.lake} "SELECT model_id, sum(fee_micros) AS fees_micros '
        'FROM inference_events GROUP BY ALL ORDER BY fees_micros DESC LIMIT 10"',
        highlight=False,
    )
    console.print(f'  royalty sql --lake {result.lake} "{dead_letters_by_reason_sql}"', highlight=False, soft_wrap=True)
    if "holder token" in result.chain:
        console.print(
            f'  royalty sql --lake {result.lake} "SELECT epoch, holder, credited_micros FROM holder_payables '
            'ORDER BY epoch, credited_micros DESC"',
            highlight=False,
            soft_wrap=True,
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
