"""The `royalty` command line: the single entry point of every job and tool."""

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from royalty import (
    analytics_commands,
    bundle_commands,
    catalog_commands,
    chain_commands,
    claims_commands,
    registry_commands,
)
from royalty.common import (
    AcceptUnreconciledOption,
    AcceptUnverifiedOption,
    ConfigOption,
    DataPathOption,
    LakeOption,
    exit_code_of,
    kafka_security,
    load_settings,
    registry_rules,
    stderr,
    stdout,
    with_lake,
    writing_ledger,
)
from royalty.common import fail as _fail
from royalty.logs import configure_logging
from royalty.output import output_formats, render
from schemas.errors import RoyaltyError

if TYPE_CHECKING:
    from royalty.config import Settings

app = typer.Typer(
    help="royalty-engine: event-sourced royalty accounting for community-owned AI models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Plain help: flags shown as flags (not `<bool>`), `[env ...]`/`[default ...]` kept (rich markup ate them),
    # lines that fit any terminal or pipe, and rich's markdown not imported at start.
    rich_markup_mode=None,
)
schemas_app = typer.Typer(help="The producer contract: event schemas.", no_args_is_help=True)
app.add_typer(schemas_app, name="schemas")


@schemas_app.command("export")
def schemas_export(
    directory: Annotated[Path, typer.Argument(help="Folder to write the JSON Schema files to.")],
) -> None:
    """Write one JSON Schema file per event type, for producers."""
    from schemas.jsonschema import export_json_schemas

    for path in export_json_schemas(directory):
        stdout.print(f"wrote {path}")


@app.command()
def sql(
    query: Annotated[str | None, typer.Argument(help="SQL to run (SELECT or EXPLAIN only).")] = None,
    lake: LakeOption = None,
    data_path: DataPathOption = None,
    config: ConfigOption = None,
    output_format: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
    as_of_snapshot: Annotated[
        int | None, typer.Option("--as-of-snapshot", help="Answer as the ledger stood at this snapshot.")
    ] = None,
    as_of_epoch: Annotated[
        int | None, typer.Option("--as-of-epoch", help="Answer as the ledger stood when this epoch closed.")
    ] = None,
    print_attach: Annotated[
        bool, typer.Option("--print-attach", help="Print DuckDB statements that attach the ledger read-only; run none.")
    ] = False,
    timeout_s: Annotated[
        int | None, typer.Option("--timeout-s", help="Stop the query after this many seconds. [default 300]")
    ] = None,
) -> None:
    """Run a read-only query against the ledger's analyst views."""
    from ledger import Ledger, define_views, retrying_contention, run_query
    from ledger.attach import attach_statements, epoch_snapshot
    from ledger.sql_policy import lock_down, lock_down_statements
    if output_format not in output_formats:
        _fail(ValueError(f"--format must be one of {', '.join(output_formats)}, not `{output_format}`"))
    if as_of_snapshot is not None and as_of_epoch is not None:
        _fail(ValueError("give --as-of-snapshot or --as-of-epoch, not both"))
    if query is None and not print_attach:
        _fail(ValueError("give a QUERY to run, or --print-attach"))
    settings = load_settings({"lake": lake, "data_path": data_path, "query_s_max": timeout_s}, config)
    # Analysts read through the SELECT-only role when one is configured (`royalty catalog grant-reader`).
    catalog = settings.reader_lake or settings.lake
    try:
        snapshot = as_of_snapshot
        if as_of_epoch is not None:
            with Ledger.open_read_only(catalog, settings.data_path) as ledger:
                snapshot = epoch_snapshot(ledger, as_of_epoch)
        if print_attach:
            with Ledger.open_read_only(catalog, settings.data_path, snapshot_version=snapshot) as ledger:
                limits = (ledger.location.data_path, settings.query_memory_mb_max, settings.query_threads_max)
                statements = [*attach_statements(ledger, snapshot), *lock_down_statements(*limits)]
                stdout.file.write("\n".join(statements) + "\n")
                return

        def query_once():
            with Ledger.open_read_only(catalog, settings.data_path, snapshot_version=snapshot) as ledger:
                define_views(ledger)
                lock_down(ledger, settings.query_memory_mb_max, settings.query_threads_max)
                return run_query(ledger, query, settings.query_s_max)

        # Opening, defining the views and locking down read the catalog too: beside a writer on a SQLite catalog
        # each may meet its lock, and is tried again on a fresh connection.
        result = retrying_contention(query_once)
    except RoyaltyError as error:
        _fail(error)
    except Exception as error:  # DuckDB's own errors: a typo in the query is not a crash.
        _fail(RoyaltyError(f"query failed: {error}"))
    render(result, output_format, stdout)


@app.command()
def verify(
    lake: LakeOption = None,
    data_path: DataPathOption = None,
    config: ConfigOption = None,
    output_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    remove_orphans: Annotated[
        bool,
        typer.Option(
            "--remove-orphans",
            help="Delete data-folder files that no snapshot lists (left by killed appends), if old enough.",
        ),
    ] = False,
    orphan_age_s_min: Annotated[
        float | None,
        typer.Option(
            "--orphan-age-s-min",
            min=0,
            help="Only remove orphans at least this old, as an append may be in flight. [default: 86400]",
        ),
    ] = None,
    retired_files: Annotated[
        bool,
        typer.Option(
            "--retired-files",
            help="Also re-read the files compactions retired and re-check their proofs (time travel to before a "
            "compaction reads them).",
        ),
    ] = False,
) -> None:
    """Prove the ledger is append-only and every data file is intact; exit 1 if not."""
    from ledger import Ledger
    from ledger.orphans import orphan_age_s_min_default, removal_blocked
    from ledger.orphans import remove_orphans as remove_orphan_files
    from ledger.verify import verify as verify_ledger

    settings = load_settings({"lake": lake, "data_path": data_path}, config)
    try:
        with Ledger.open_read_only(settings.lake, settings.data_path) as ledger:
            report = verify_ledger(ledger, retired_files=retired_files)
            store = ledger.store  # a local folder or an `s3://` prefix: orphans are removed where they are
    except RoyaltyError as error:
        _fail(error)
    orphans = report.orphans or []
    if orphan_age_s_min is None:
        orphan_age_s_min = orphan_age_s_min_default
    removed = remove_orphan_files(orphans, orphan_age_s_min, store) if remove_orphans else []
    if output_json:
        fields = {**vars(report), "orphans": [vars(o) for o in orphans]}
        stdout.file.write(json.dumps({**fields, "orphans_removed": [o.path for o in removed], "ok": report.ok}) + "\n")
    else:
        stdout.print(
            f"checked {report.snapshots:,} snapshots and {report.files:,} data files ({report.bytes_checked:,} bytes)"
        )
        for problem in report.problems:
            stderr.print(f"[bold red]problem:[/] {problem}", highlight=False)
        for warning in report.warnings:
            stderr.print(f"[bold yellow]warning:[/] {warning}", highlight=False)
        own = [o for o in orphans if o.ours]
        if own:
            stdout.print(
                f"note: {len(own)} file(s), {sum(o.size_bytes for o in own)} bytes, in the data folder belong "
                "to no snapshot (left by appends that were interrupted); they are not part of the ledger. "
                + (
                    f"Removed {len(removed)} at least {orphan_age_s_min:g} s old."
                    if remove_orphans
                    else f"`--remove-orphans` deletes those at least {orphan_age_s_min:g} s old."
                ),
                highlight=False,
            )
        if len(own) < len(orphans):
            stdout.print(
                f"note: {len(orphans) - len(own)} Parquet file(s) in the data folder are not this catalog's leftovers "
                "(another ledger's, a copy's or a newer catalog's of this ledger, a foreign file, or written before "
                "names carried the ledger's id); they are never removed: delete them by hand once you know no "
                "other catalog uses them.",
                highlight=False,
            )
        if orphans and removal_blocked(orphans):
            stderr.print(
                "[bold yellow]warning:[/] the data folder holds files another catalog of this same ledger committed "
                "(a copy, or a newer catalog than this restored one): nothing is removed while it does. See "
                "docs/operations.md (Backup, restore and relocation)",
                highlight=False,
            )
        stdout.print(
            "[green]ledger verified: append-only, every file intact[/]"
            if report.ok
            else f"[bold red]ledger NOT verified: {len(report.problems)} problem(s)[/]"
        )
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def migrate(
    lake: LakeOption = None,
    data_path: DataPathOption = None,
    config: ConfigOption = None,
) -> None:
    """Move a ledger written by an earlier version forward to this version's format.

    Back the ledger up first and stop every process using it. Each step is one transaction that
    records itself, so an interrupted migration is resumed by running the command again.
    """
    from ledger import Ledger
    from ledger.format import format_version_current

    settings = load_settings({"lake": lake, "data_path": data_path}, config)
    try:
        with Ledger.open_for_migration(settings.lake, settings.data_path) as ledger:
            result = ledger.migrate()
    except RoyaltyError as error:
        _fail(error)
    for step in result.steps_applied:
        stdout.print(f"applied format step {step}", highlight=False)
    if result.steps_applied:
        stdout.print(f"ledger migrated from format {result.format_before} to {result.format_after}")
    else:
        stdout.print(f"ledger is already in format {format_version_current}; nothing to do")


@app.command()
def compact(
    lake: LakeOption = None,
    data_path: DataPathOption = None,
    config: ConfigOption = None,
    older_than_s: Annotated[
        float,
        typer.Option("--older-than-s", min=0, help="Only merge files committed at least this many seconds ago."),
    ] = 0.0,
    output_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Merge the small data files of each event table, event date and epoch into one, keeping the proof.

    Each merge is one transaction recording the files it retired, the merged file's SHA-256 and proof that
    it holds exactly their rows (`royalty verify` re-checks it). Registry tables are never merged, nor files
    of two epochs. Safe beside ingest and close-epoch (docs/operations.md, Compaction).
    """
    from ledger import Ledger
    from ledger.compaction import compact as compact_ledger

    settings = load_settings({"lake": lake, "data_path": data_path}, config)
    try:
        with Ledger.open(settings.lake, settings.data_path, create=False) as ledger:
            report = compact_ledger(ledger, older_than_s)
    except RoyaltyError as error:
        _fail(error)
    if output_json:
        stdout.file.write(json.dumps(vars(report)) + "\n")
    else:
        stdout.print(
            f"compacted: {report.merges:,} merged file(s) written, {report.files_retired:,} file(s) retired, "
            f"{report.rows:,} rows, {report.bytes_written:,} bytes"
            + (f"; {report.skipped} merge(s) left for the next run (catalog busy)" if report.skipped else ""),
            highlight=False,
        )


@app.command()
def expire(
    lake: LakeOption = None,
    data_path: DataPathOption = None,
    config: ConfigOption = None,
    older_than_s: Annotated[
        int | None,
        typer.Option(
            "--older-than-s",
            min=0,
            help="Only expire snapshots committed at least this many seconds ago (setting `expire_older_than_s`). "
            "[default: 3600, an hour]",
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be expired; change nothing.")] = False,
    output_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Expire old snapshots the ledger no longer needs, recording a digest of their history that verify checks.

    Keeps every epoch's closing snapshot, every snapshot a ledger table refers to, every snapshot that did more than
    append to the stream's tables, and the last `--older-than-s`; time travel works to those only. Retired files no
    kept snapshot sees are deleted an hour later (docs/operations.md, Snapshot expiry).
    """
    from ledger import Ledger
    from ledger.expiry import expire as expire_ledger

    settings = load_settings({"lake": lake, "data_path": data_path, "expire_older_than_s": older_than_s}, config)
    try:
        with Ledger.open(settings.lake, settings.data_path, create=False) as ledger:
            report = expire_ledger(ledger, _expire_older_than_s(settings), dry_run=dry_run)
    except RoyaltyError as error:
        _fail(error)
    if output_json:
        stdout.file.write(json.dumps(vars(report)) + "\n")
        return
    verb = "would expire" if dry_run else "expired"
    stdout.print(
        f"{verb} {report.snapshots_expired:,} snapshot(s) ({_shortened(report.expired_ranges or 'none')}), kept "
        f"{report.snapshots_retained:,}; {report.files_dropped:,} retired file(s) dropped from the catalog, "
        f"{report.files_deleted:,} deleted; {report.rows_flushed:,} bookkeeping row(s) moved out of the catalog",
        highlight=False,
    )


def _expire_older_than_s(settings: "Settings") -> float:
    """The setting `expire_older_than_s`, or the ledger's default (an hour) when unset."""
    from ledger.constants import expire_older_than_s_default

    return expire_older_than_s_default if settings.expire_older_than_s is None else settings.expire_older_than_s


def _shortened(text: str, chars_max: int = 80) -> str:
    return text if len(text) <= chars_max else text[:chars_max] + "..."


@app.command()
def backup(
    to: Annotated[Path, typer.Option("--to", help="New folder for the copy (must not exist, or be empty).")],
    lake: LakeOption = None,
    data_path: DataPathOption = None,
    config: ConfigOption = None,
    output_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Copy an embedded ledger consistently while writers run: the catalog, the files it names; verified."""
    from ledger.backup import backup as backup_ledger
    from ledger.connection import LedgerLocation

    settings = load_settings({"lake": lake, "data_path": data_path}, config)
    try:
        result = backup_ledger(LedgerLocation.parse(settings.lake, settings.data_path), to)
    except (RoyaltyError, ValueError) as error:
        _fail(error)
    if output_json:
        stdout.file.write(json.dumps(vars(result)) + "\n")
        return
    stdout.print(
        f"backed up the ledger at snapshot {result.snapshot_id}: the catalog and {result.files:,} data files "
        f"({result.bytes_copied:,} bytes), verified -> {result.directory}",
        highlight=False,
        soft_wrap=True,
    )


def _until_idle_s(until_idle_s: float | None, deprecated: float | None) -> float | None:
    """`--until-idle` (renamed `--until-idle-s`, units last) still works, with a warning."""
    if deprecated is None:
        return until_idle_s
    if until_idle_s is not None:
        _fail(ValueError("give --until-idle-s only (--until-idle is its deprecated name)"))
    sys.stderr.write("warning: --until-idle is deprecated; use --until-idle-s\n")
    return deprecated


@app.command()
def ingest(
    bootstrap_servers: Annotated[
        str | None, typer.Option("--bootstrap-servers", help="Kafka HOST:PORT[,...]. [env ROYALTY_BOOTSTRAP_SERVERS]")
    ] = None,
    topic: Annotated[
        list[str] | None, typer.Option("--topic", help="Topic to ingest (repeatable). [default: inference-events]")
    ] = None,
    from_file: Annotated[
        list[str] | None, typer.Option("--from-file", help="Backfill from a JSON-lines file ('-': stdin; repeatable).")
    ] = None,
    lake: LakeOption = None,
    data_path: DataPathOption = None,
    config: ConfigOption = None,
    group_id: Annotated[str | None, typer.Option("--group-id", help="Share partitions with other processes.")] = None,
    asset: Annotated[str | None, typer.Option("--asset", help="The one accepted fee asset. [default: USDC]")] = None,
    batch_records_max: Annotated[
        int | None, typer.Option("--batch-records-max", help="Most messages a batch. [default: 50,000]")
    ] = None,
    batch_bytes_max: Annotated[
        int | None, typer.Option("--batch-bytes-max", help="Most bytes of messages a batch. [default: 67,108,864]")
    ] = None,
    batch_latency_ms_max: Annotated[
        int | None,
        typer.Option("--batch-latency-ms-max", help="Longest a message waits for its batch. [default: 1,000]"),
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option("--metrics-port", help="Serve Prometheus metrics here. [default: none]")
    ] = None,
    until_idle_s: Annotated[
        float | None, typer.Option("--until-idle-s", help="Stop after the source has been quiet this many seconds.")
    ] = None,
    compact_when_idle_s: Annotated[
        int | None,
        typer.Option(
            "--compact-when-idle-s", help="Compact the ledger when the source is quiet this long. [default 0: never]"
        ),
    ] = None,
    expire_when_idle_s: Annotated[
        int | None,
        typer.Option(
            "--expire-when-idle-s",
            help="Expire old snapshots (as `royalty expire`) when the source is quiet this long. [default 0: never]",
        ),
    ] = None,
    until_idle_deprecated: Annotated[
        float | None, typer.Option("--until-idle", hidden=True, help="Deprecated: --until-idle-s.")
    ] = None,
    log_format: Annotated[
        str | None,
        typer.Option("--log-format", help="auto (text on a terminal, JSON otherwise), json or text. [default: auto]"),
    ] = None,
) -> None:
    """Consume CloudEvents from Kafka (or files) into the ledger, exactly once."""
    import os
    import socket

    from ingest.errors import IngestConfigError
    from ingest.metrics import IngestMetrics, serve_metrics
    from ingest.service import IngestService
    from ingest.sources import FileSource, KafkaSource
    from ledger import Ledger

    until_idle_s = _until_idle_s(until_idle_s, until_idle_deprecated)
    settings = load_settings(
        {
            "lake": lake,
            "data_path": data_path,
            "bootstrap_servers": bootstrap_servers,
            "topics": tuple(topic) if topic else None,
            "group_id": group_id,
            "asset": asset,
            "batch_records_max": batch_records_max,
            "batch_bytes_max": batch_bytes_max,
            "batch_latency_ms_max": batch_latency_ms_max,
            "compact_when_idle_s": compact_when_idle_s,
            "expire_when_idle_s": expire_when_idle_s,
            "metrics_port": metrics_port,
            "log_format": log_format,
        },
        config,
    )
    configure_logging(settings.log_format)
    if not from_file and "bootstrap_servers" not in settings.model_fields_set:
        # The default broker address is a guess: retrying it forever looked like a hang.
        _fail(
            IngestConfigError(
                "no source to ingest: give --bootstrap-servers HOST:PORT (or set ROYALTY_BOOTSTRAP_SERVERS, or "
                "bootstrap_servers in royalty.toml) to consume Kafka, or --from-file PATH ('-': stdin) to backfill"
            )
        )
    writer = f"{socket.gethostname()}:{os.getpid()}"
    try:
        security = None if from_file else kafka_security(settings)  # a bad combination fails before the ledger
        ledger = Ledger.open(settings.lake, settings.data_path)
        metrics = IngestMetrics()
        if settings.metrics_port is not None:
            try:
                serve_metrics(metrics, settings.metrics_port)
            except OSError as error:
                raise IngestConfigError(
                    f"cannot serve metrics on port {settings.metrics_port}: {error.strerror}; pick another "
                    "--metrics-port (ROYALTY_METRICS_PORT)"
                ) from None

        def make_source(service: IngestService):
            if from_file:
                # What each file resumes from, and why, before it is read; one line each, unwrapped (paths).
                return FileSource(from_file, ledger, stdin=sys.stdin.buffer, report=_report_unwrapped)
            return KafkaSource(
                settings.bootstrap_servers,
                settings.topics,
                settings.group_id,
                ledger.stored_offsets,
                on_revoked=service.flush,
                client_id=writer,
                security=security,
                unreachable_s_max=settings.broker_unreachable_s_max,
            )

        service = IngestService(
            ledger,
            make_source,
            settings.asset,
            settings.batch_records_max,
            settings.batch_latency_ms_max,
            writer,
            metrics,
            batch_bytes_max=settings.batch_bytes_max,
            event_time_future_s_max=settings.event_time_future_s_max,
            compact_when_idle_s=settings.compact_when_idle_s,
            expire_when_idle_s=settings.expire_when_idle_s,
            expire_older_than_s=_expire_older_than_s(settings),
        )
        service.install_signal_handlers()
        idle_s = until_idle_s if until_idle_s is not None else (0.0 if from_file else None)
        summary = service.run(until_idle_s=idle_s)
        ledger.close()
    except RoyaltyError as error:
        _fail(error)
    stderr.print(
        f"ingested {summary.messages:,} messages: {summary.events:,} events, {summary.duplicates:,} duplicates "
        f"dropped, {summary.dead_letters:,} dead letters, in {summary.batches:,} batches ({summary.elapsed_s:,.1f} s; "
        f"stopped by {summary.stopped_by})",
        highlight=False,
        soft_wrap=True,
    )


def _report_unwrapped(text: str) -> None:
    stderr.print(text, highlight=False, soft_wrap=True)


@app.command("produce-sample")
def produce_sample(
    events: Annotated[int, typer.Option("--events", min=1, help="Inference events to produce.")] = 100_000,
    bootstrap_servers: Annotated[
        str | None, typer.Option("--bootstrap-servers", help="Kafka HOST:PORT. [env ROYALTY_BOOTSTRAP_SERVERS]")
    ] = None,
    topic: Annotated[str | None, typer.Option("--topic", help="Topic to produce to.")] = None,
    to_file: Annotated[Path | None, typer.Option("--to-file", help="Write JSON lines here instead of Kafka.")] = None,
    duplicates_ppm: Annotated[
        int, typer.Option("--duplicates-ppm", min=0, max=1_000_000, help="Exact duplicates per million.")
    ] = 10_000,
    conflicts_ppm: Annotated[
        int, typer.Option("--conflicts-ppm", min=0, max=1_000_000, help="Conflicting duplicates per million.")
    ] = 1_000,
    invalid_ppm: Annotated[
        int, typer.Option("--invalid-ppm", min=0, max=1_000_000, help="Invalid messages per million.")
    ] = 10_000,
    models: Annotated[int, typer.Option("--models", min=1, help="Models, some derived from others.")] = 20,
    contributors: Annotated[int, typer.Option("--contributors", min=1, help="Contributors.")] = 200,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives the same traffic.")] = 7,
    config: ConfigOption = None,
) -> None:
    """Produce realistic synthetic traffic (registry events first) to Kafka or a file."""
    from rich.progress import Progress

    from ingest.producer import produce_sample_traffic

    settings = load_settings({"bootstrap_servers": bootstrap_servers, "topics": (topic,) if topic else None}, config)
    if to_file is None and "bootstrap_servers" not in settings.model_fields_set:
        _fail(
            ValueError(
                "no destination: give --to-file PATH to write JSON lines, or --bootstrap-servers HOST:PORT (or "
                "ROYALTY_BOOTSTRAP_SERVERS) to produce to Kafka"
            )
        )
    if to_file is not None and to_file.is_dir():
        _fail(ValueError(f"--to-file `{to_file}` is a folder; give a file path, e.g. {to_file / 'sample.jsonl'}"))
    if to_file is not None and not to_file.parent.is_dir():
        _fail(ValueError(f"--to-file `{to_file}`: the folder `{to_file.parent}` does not exist; create it first"))
    with Progress(console=stderr, transient=True) as progress:
        task = progress.add_task("producing", total=events)
        counts = _produce(
            produce_sample_traffic,
            events=events,
            bootstrap_servers=None if to_file else settings.bootstrap_servers,
            topic=settings.topics[0],
            to_file=to_file,
            duplicates_ppm=duplicates_ppm,
            conflicts_ppm=conflicts_ppm,
            invalid_ppm=invalid_ppm,
            models=models,
            contributors=contributors,
            seed=seed,
            on_progress=lambda done: progress.update(task, completed=done),
        )
    stderr.print(
        " ".join(f"{name}={count:,}" for name, count in counts.items()) + f" -> {to_file or settings.topics[0]}",
        highlight=False,
        soft_wrap=True,
    )


def _produce(produce: Callable[..., dict[str, int]], **arguments: Any) -> dict[str, int]:
    """Run `produce`; a broker that cannot be reached is an error naming it (exit 75), not a traceback."""
    from kafka.errors import KafkaError

    try:
        return produce(**arguments)
    except KafkaError as error:
        _fail(
            RoyaltyError(
                f"cannot produce to Kafka at `{arguments['bootstrap_servers']}`: {type(error).__name__} {error}; "
                "check --bootstrap-servers and that the broker runs"
            ),
            exit_code=75,
        )


@app.command("close-epoch")
def close_epoch_command(
    lake: LakeOption = None,
    data_path: DataPathOption = None,
    config: ConfigOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Compute and print the epoch; write nothing.")] = False,
    accept_unverified_files: AcceptUnverifiedOption = False,
    accept_unreconciled: AcceptUnreconciledOption = False,
    from_rollups: Annotated[
        bool | None,
        typer.Option(
            "--from-rollups/--from-events",
            help="Read the appends' rollups where exact (the same epoch, faster), or every event; "
            "default: the close_from_rollups setting (off).",
        ),
    ] = None,
) -> None:
    """Close the next epoch: split every event committed since the last one into postings and payables."""
    from royalty.summary import render_summary
    from settlement import InputChecks
    from settlement.use_cases.close_epoch import close_epoch

    settings = load_settings({"lake": lake, "data_path": data_path, "close_from_rollups": from_rollups}, config)
    try:
        with writing_ledger(settings, "closing epoch") as (ledger, progress):
            checks = InputChecks(accept_unverified_files, accept_unreconciled)
            summary = close_epoch(
                ledger,
                dry_run=dry_run,
                progress=progress,
                checks=checks,
                rules=registry_rules(settings),
                registry_contract=registry_commands.onchain_registry(settings),
                from_rollups=settings.close_from_rollups,
            )
    except RoyaltyError as error:
        _fail(error)
    render_summary(summary, stdout)
    if summary.holder_excluded is not None and not settings.distributor:
        stdout.print(
            "note: no `distributor` setting: the distributors this ledger settled to or migrated from are not paid as "
            "holders, but one it has not settled to yet would be if it holds the token; set ROYALTY_DISTRIBUTOR "
            "(or `distributor` in the config) before closing",
            highlight=False,
            soft_wrap=True,
        )
    if settings.pushgateway_url and not dry_run:
        _push_figures("close-epoch", vars(summary), settings.pushgateway_url)


def _push_figures(job: str, figures: dict, url: str) -> None:
    from royalty.job_metrics import push_figures

    warning = push_figures(job, figures, url)
    if warning:
        stderr.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)


analytics_commands.register(app)


chain_commands.register(app)
claims_commands.register(app)
registry_commands.register(app)
bundle_commands.register(app)


catalog_commands.register(app)


@app.command()
def demo(
    workdir: Annotated[
        Path | None, typer.Option("--workdir", help="Folder for the demo's ledger (default: temp).")
    ] = None,
    events: Annotated[int, typer.Option("--events", min=1, help="Inference events to produce.")] = 100_000,
    kafka: Annotated[
        str | None, typer.Option("--kafka", help="Use this Kafka (HOST:PORT) instead of the embedded broker.")
    ] = None,
    rpc_url: Annotated[
        str | None, typer.Option("--rpc-url", help="Use this EVM node instead of the in-process chain.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Delete a ledger already in WORKDIR/lake; without it the demo refuses.")
    ] = False,
) -> None:
    """The main job on embedded defaults: broker, sample traffic, ingest, close the epoch, summary."""
    from royalty.demo import render_demo, run_demo
    from settlement.use_cases.ledger_setup import register_with_ledger

    configure_logging("auto", level=30)
    register_with_ledger()  # the demo loads no settings: the settlement's tables and views, declared here
    try:
        result = run_demo(workdir, events, kafka, rpc_url, stderr, force=force)
    except RoyaltyError as error:
        _fail(error)
    render_demo(result, stdout)


def _redacted_excepthook(kind: type[BaseException], value: BaseException, trace: object) -> None:
    """Print an unexpected exception's traceback with every credential masked (a DSN, an RPC key)."""
    import traceback

    from ledger.redact import redact

    sys.stderr.write(redact("".join(traceback.format_exception(kind, value, trace))))


def _quiet_when_the_reader_left() -> None:
    """`royalty proof | head`: once the reader of standard output has gone, what is left unwritten is dropped
    instead of ending in "Exception ignored ... BrokenPipeError" at exit (click already stops a write that meets
    the closed pipe, silently)."""
    import os

    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main() -> None:
    import atexit

    atexit.register(_quiet_when_the_reader_left)
    configure_logging()
    try:
        app()
    except SystemExit as exiting:
        # typer (click) ends a command whose write met a closed pipe with exit 1 after wrapping the streams in its
        # PacifyFlushWrapper; the reader having had enough (`| head`) is not a failure of the command.
        if exiting.code == 1 and type(sys.stdout).__name__ == "PacifyFlushWrapper":
            sys.exit(0)
        raise
    except RoyaltyError as error:
        from ledger.redact import redact

        stderr.print(f"[bold red]error:[/] {escape(redact(with_lake(str(error))))}", highlight=False, soft_wrap=True)
        sys.exit(exit_code_of(error))
    except Exception as error:
        # A DuckDB error no command turned into a typed one (a read while the catalog is locked or down):
        # typed here so that contention and outages exit 75 and a scheduler retries.
        import duckdb

        if not isinstance(error, duckdb.Error):
            # An unexpected crash: its traceback, credentials masked (typer replaces sys.excepthook itself).
            _redacted_excepthook(type(error), error, error.__traceback__)
            sys.exit(1)
        from ledger.ledger import ledger_error_of
        from ledger.redact import redact

        typed = ledger_error_of(error, "the command", "--lake")
        stderr.print(f"[bold red]error:[/] {escape(redact(typed))}", highlight=False, soft_wrap=True)
        sys.exit(exit_code_of(typed))


if __name__ == "__main__":
    main()
