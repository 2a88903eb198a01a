"""`royalty close-epoch`'s summary, rendered with rich."""

from rich.console import Console
from rich.table import Table

from settlement import EpochSummary, closed_by_another_message
from settlement.engine import summary_rows


def render_summary(summary: EpochSummary, console: Console | None = None) -> None:
    """Print the summary table (and any registry problems) for `royalty close-epoch`."""
    console = console or Console()
    if summary.noop:
        console.print(
            f"nothing to settle: no new events, reversals or suspense releases since snapshot "
            f"{summary.previous_snapshot} (epoch {summary.epoch - 1}); nothing was written"
        )
        return
    if summary.closed_by_another:
        console.print(closed_by_another_message(summary.epoch))
        return
    verb = "would close" if summary.dry_run else "closed"
    table = Table(
        title=f"epoch {summary.epoch} {verb}: snapshots {summary.previous_snapshot + 1}..{summary.closing_snapshot}"
    )
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        *summary_rows(summary),
        ("postings", summary.posting_count),
        ("recipients", summary.recipient_count),
        ("recipients without payout address", len(summary.unaddressed_recipients)),
    ]
    if summary.rollup_cells is not None:
        rows += [
            ("hour cells read from rollups", summary.rollup_cells[0]),
            ("hour cells read from events", summary.rollup_cells[1]),
        ]
    for name, value in rows:
        table.add_row(name, f"{value:,}")
    console.print(table)
    if summary.holder_excluded is not None:
        never = ", ".join(summary.holder_excluded) or "none"
        console.print(f"token holders: never paid as holders (besides the zero address and the token): {never}")
    for problem in summary.problems:
        console.print(f"[yellow]registry:[/yellow] {problem}")
    for problem in summary.accepted_problems:
        console.print(f"[bold yellow]accepted by override:[/] {problem}", highlight=False)
    if summary.dry_run:
        console.print("dry run: nothing was written")
    else:
        console.print(f"written at ledger snapshot {summary.written_snapshot}")
