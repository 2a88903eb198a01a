"""`royalty demo`: the whole pipeline on embedded defaults, for a newcomer with Python and pip.

Stages: start the embedded Kafka-compatible broker (or use `--kafka`), produce sample traffic
with some duplicates and invalid messages, ingest it until idle, close the epoch, deploy the
distributor on the in-process chain (or `--rpc-url`), settle the root, claim for the two largest
payees, write the settlement report, and print a summary whose ledger figures are re-read with
the same SQL a user would run.

On the in-process chain the registry is on-chain (docs/registry.md): the demo deploys a ModelRegistry,
registers the sample's models with their lineage and first policies (contributors and compute providers
are addresses), meters its traffic after those policies take effect, syncs the registry into the ledger
(`sync-registry`) and closes the epoch in on-chain mode: the sample's registry records on Kafka are ignored.
With `--rpc-url` it keeps the operator registry (Kafka).
"""

import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from web3.contract import Contract

from ingest.producer import produce_sample_traffic
from ingest.sample import SampleShape, SampleTraffic
from ingest.service import IngestService
from ingest.sources import KafkaSource
from ledger import Ledger, define_views, run_query
from royalty.exceptions import DemoWorkdirError
from settlement.onchain import (
    Chain,
    TransactionRevertedError,
    connect,
    deploy_contracts,
    deploy_registry,
    distributor_contract,
    largest_leaves,
    load_signer,
    register_model,
    registry_contract,
    require_embedded_chain,
    set_policy,
    token_contract,
    transact,
)
from settlement.use_cases.close_epoch import close_epoch
from settlement.use_cases.settle import settle
from settlement.use_cases.sync_claims import sync_claims
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
# On-chain, a first policy applies no earlier than its block: each is set to apply this many seconds after it
# is sent; the demo's traffic is metered after the last one applies, spread over `traffic_span_s` (so it is in
# the past when ingested).
policy_start_delay_s = 5
policy_attempts_max = 3
traffic_span_s = 2


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
        chain = registry = None
        timing = None
        if rpc_url is None:
            started = time.monotonic()
            task = progress.add_task("register models on-chain", total=sample_models)
            chain = connect(None, load_signer(None))
            registry, start = _onchain_registry(chain, lambda done: progress.update(task, completed=done))
            timing = (start, max(1, events * 86_400 // traffic_span_s))
            time.sleep(max(0.0, (start - datetime.now(UTC)).total_seconds() + traffic_span_s))
            result.chain["registry"] = registry.address
            result.stage_seconds["registry"] = time.monotonic() - started
        started = time.monotonic()
        task = progress.add_task("produce sample traffic", total=events)
        result.produced = produce_sample_traffic(
            events,
            bootstrap_servers,
            demo_topic,
            None,
            models=sample_models,
            contributors=sample_contributors,
            seed=sample_seed,
            on_progress=lambda done: progress.update(task, completed=done),
            provider_addresses=registry is not None,
            timing=timing,
        )
        story = story_messages(events, registry is not None, timing)
        _produce_messages(bootstrap_servers, story)
        result.produced["story"] = len(story)
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

            started = time.monotonic()
            task = progress.add_task("close epoch 1", total=5)
            if chain is not None and registry is not None:  # as `royalty sync-registry` would, past every event
                tester = chain.w3.provider.ethereum_tester  # type: ignore[attr-defined]
                tester.time_travel(int(time.time()) + 1)  # a block stamped after every event: the cursor
                tester.mine_blocks(1)
                sync_registry(ledger, chain, registry, from_block=0)
            close_epoch(
                ledger,
                progress=lambda step, done, total: progress.update(task, completed=done),
                registry_contract=None if registry is None else registry.address,
            )
            result.stage_seconds["close epoch"] = time.monotonic() - started

            started = time.monotonic()
            task = progress.add_task("deploy, settle, claim", total=4)
            chain = chain or connect(rpc_url, load_signer(None))
            deployed = deploy_contracts(chain, timelock_seconds=0, mint_units=demo_mint_units)
            distributor = distributor_contract(chain, deployed.distributor)
            progress.update(task, completed=1)
            settled = settle(
                ledger, chain, distributor, tree_dir=workdir / "trees", from_block=deployed.deployment_block
            )
            progress.update(task, completed=2)
            result.chain = {
                **result.chain,
                "chain id": chain.chain_id,
                "distributor": deployed.distributor,
                "root": settled.root or "",
                "settle tx": settled.tx_hash or "",
            }
            result.claims = _claim_top_payees(ledger, chain, distributor, settled.epoch or 0, claims_count)
            # as `royalty sync-claims` would: the `claims` view
            sync_claims(ledger, chain, distributor, from_block=deployed.deployment_block)
            progress.update(task, completed=3)
            result.report = workdir / "report.html"
            write_report(ledger, settled.epoch or 1, result.report)
            progress.update(task, completed=4)
            result.stage_seconds["settle, claim, report"] = time.monotonic() - started
    result.figures = summary_figures(lake)
    result.dead_letters_by_reason = dead_letters_by_reason(lake)
    return result


def _onchain_registry(chain: Chain, progress: Callable[[int], None]) -> tuple[Contract, datetime]:
    """Deploy a ModelRegistry and register the sample's models (lineage and first policy, contributors by their
    sample payout address); return it and the time its policies apply from."""
    traffic = SampleTraffic(
        SampleShape(models=sample_models, contributors=sample_contributors, provider_addresses=True), seed=sample_seed
    )
    records = [json.loads(message) for message in traffic.registry()]
    addresses = {
        r["data"]["contributor_id"]: r["data"]["payout_address"]
        for r in records
        if r["type"] == "ai.contributor.registered.v1"
    }
    registry = registry_contract(chain, deploy_registry(chain).registry)
    for record in records:
        if record["type"] == "ai.model.registered.v1":
            parents = {p["model_id"]: p["share_ppm"] for p in record["data"]["parents"]}
            register_model(chain, registry, record["data"]["model_id"], parents)
    start = datetime.fromtimestamp(0, UTC)
    for done, record in enumerate(r for r in records if r["type"] == "ai.split-policy.set.v1"):
        data = record["data"]
        shares = {addresses.get(s["recipient"], s["recipient"]): s["share_ppm"] for s in data["shares"]}
        effective = _set_first_policy(chain, registry, data["model_id"], shares, data["compute_share_ppm"])
        start = max(start, effective)
        progress(done + 1)
    return registry, start


def _set_first_policy(
    chain: Chain, registry: Contract, model_id: str, shares: dict[str, int], compute_ppm: int
) -> datetime:
    """Set a model's first policy `policy_start_delay_s` after now; return when it applies from.

    Never before its block, which the in-process chain stamps with the wall clock or, when blocks come faster
    than one a second, one second after the last block. On a starved machine more than the delay can pass
    between reading the clock and the block (the contract refuses a retroactive policy): try again, later.
    """
    from eth_tester.exceptions import TransactionFailed

    def attempt() -> datetime:
        latest = int(chain.w3.eth.get_block("latest")["timestamp"])
        effective = datetime.fromtimestamp(max(latest, int(time.time())) + policy_start_delay_s, UTC)
        set_policy(chain, registry, model_id, effective, shares, compute_ppm)
        return effective

    for _ in range(policy_attempts_max - 1):
        with suppress(TransactionRevertedError, TransactionFailed):
            return attempt()
    return attempt()


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
    from ingest.producer import sample_messages

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


def _produce_messages(bootstrap_servers: str, messages: list[bytes]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap_servers.split(","), acks="all")
    try:
        for message in messages:
            producer.send(demo_topic, message, key=json.loads(message)["id"].encode())
        producer.flush()
    finally:
        producer.close()


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
