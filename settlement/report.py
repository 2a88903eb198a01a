"""The public use case `close_epoch`, its summary, and the summary rendered with rich."""

from dataclasses import dataclass, field

import polars as pl
from rich.console import Console
from rich.table import Table

from ledger.ledger import Ledger
from settlement.ledger_io import Progress, plan_from_ledger, write_plan


@dataclass(frozen=True)
class EpochSummary:
    """What closing an epoch did (or, with `dry_run`, would do). Money in micros."""

    epoch: int
    previous_snapshot: int
    closing_snapshot: int
    event_count: int
    fee_micros: int
    reversal_count: int
    reversed_micros: int
    dead_letter_count: int
    suspended_micros: int
    released_micros: int
    suspense_micros: int
    payable_micros: int
    receivable_micros: int
    group_count: int
    posting_count: int
    recipient_count: int
    unaddressed_recipients: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    noop: bool = False
    dry_run: bool = False
    written_snapshot: int | None = None


def close_epoch(ledger: Ledger, dry_run: bool = False, progress: Progress | None = None) -> EpochSummary:
    """Close the next epoch over every event committed since the last one; write it unless `dry_run`.

    With no new events, reversals or suspense releases it writes nothing and says so (`noop`).
    `progress(step, done, total)` is called as the steps go. Raises `EpochConflictError` when another
    process closed an epoch meanwhile (nothing written; run again).
    """
    if not ledger.read_only:
        ledger.ensure_tables()  # a ledger opened before the settlement tables were registered
    plan, extra = plan_from_ledger(ledger, progress)
    written = None
    if not dry_run and not plan.noop:
        written = write_plan(ledger, plan, extra["reversals"])
    if progress:
        progress("done", 5, 5)
    unaddressed = plan.payables.filter(pl.col("payout_address").is_null())["recipient"].to_list()
    return EpochSummary(
        epoch=plan.epoch,
        previous_snapshot=plan.previous_snapshot,
        closing_snapshot=plan.closing_snapshot,
        event_count=plan.event_count,
        fee_micros=plan.fee_micros,
        reversal_count=plan.reversal_count,
        reversed_micros=plan.reversed_micros,
        dead_letter_count=plan.dead_letter_count,
        suspended_micros=plan.suspended_micros,
        released_micros=plan.released_micros,
        suspense_micros=plan.suspense_micros,
        payable_micros=plan.payable_micros,
        receivable_micros=plan.receivable_micros,
        group_count=plan.group_count,
        posting_count=plan.postings.height,
        recipient_count=plan.payables.height,
        unaddressed_recipients=unaddressed,
        problems=plan.problems,
        noop=plan.noop,
        dry_run=dry_run,
        written_snapshot=written,
    )


def render_summary(summary: EpochSummary, console: Console | None = None) -> None:
    """Print the summary table (and any registry problems) for `royalty close-epoch`."""
    console = console or Console()
    if summary.noop:
        console.print(
            f"nothing to settle: no new events, reversals or suspense releases since snapshot "
            f"{summary.previous_snapshot} (epoch {summary.epoch - 1}); nothing was written"
        )
        return
    verb = "would close" if summary.dry_run else "closed"
    table = Table(
        title=f"epoch {summary.epoch} {verb}: snapshots {summary.previous_snapshot + 1}.."
        f"{summary.closing_snapshot}"
    )
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("events", summary.event_count),
        ("fees (micros)", summary.fee_micros),
        ("reversals", summary.reversal_count),
        ("reversed (micros)", summary.reversed_micros),
        ("reversal dead letters", summary.dead_letter_count),
        ("suspended (micros)", summary.suspended_micros),
        ("released from suspense (micros)", summary.released_micros),
        ("suspense balance (micros)", summary.suspense_micros),
        ("payable (micros)", summary.payable_micros),
        ("receivables (micros)", summary.receivable_micros),
        ("allocation groups", summary.group_count),
        ("postings", summary.posting_count),
        ("recipients", summary.recipient_count),
        ("recipients without payout address", len(summary.unaddressed_recipients)),
    ]
    for name, value in rows:
        table.add_row(name, f"{value:,}")
    console.print(table)
    for problem in summary.problems:
        console.print(f"[yellow]registry:[/yellow] {problem}")
    if summary.dry_run:
        console.print("dry run: nothing was written")
    else:
        console.print(f"written at ledger snapshot {summary.written_snapshot}")
