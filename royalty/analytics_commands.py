"""`royalty export` and `royalty report`: an epoch's statements and its sign-off page, for finance.

Both only read: through the SELECT-only role (`reader_lake`) when one is configured, like `royalty sql`.
"""

from pathlib import Path
from typing import Annotated

import typer

from royalty.common import (
    ConfigOption,
    DataPathOption,
    LakeOption,
    load_settings,
    reading_ledger,
    require_output_file,
    require_output_folder,
    stdout,
)

EpochOption = Annotated[int, typer.Option("--epoch", help="A closed epoch.")]


def export(
    epoch: EpochOption,
    to: Annotated[Path, typer.Option("--to", help="Folder to write DIR/epoch=N/ into.")],
    lake: LakeOption = None,
    data_path: DataPathOption = None,
    config: ConfigOption = None,
) -> None:
    """Write an epoch's payables, postings and per-contributor statements as Parquet and CSV."""
    from settlement.use_cases.export_epoch import export_epoch

    require_output_folder(to, "--to")
    settings = load_settings({"lake": lake, "data_path": data_path}, config)
    summary = reading_ledger(settings, lambda ledger: export_epoch(ledger, epoch, to))
    stdout.print(
        f"epoch {summary.epoch}: {summary.recipients:,} recipients ({summary.payable_micros:,} micros payable), "
        f"{summary.postings:,} postings, {summary.statement_lines:,} statement lines -> {summary.directory}; "
        + (f"ledger digest {summary.ledger_digest} ({summary.rules_version}), " if summary.ledger_digest else
           "not settled yet, ")
        + f"verify with `{summary.audit_command}`",
        highlight=False,
        soft_wrap=True,
    )


def report(
    epoch: EpochOption,
    out: Annotated[Path, typer.Option("--out", help="The HTML file to write.")] = Path("report.html"),
    lake: LakeOption = None,
    data_path: DataPathOption = None,
    config: ConfigOption = None,
) -> None:
    """Write an epoch's self-contained settlement report (HTML, inline SVG charts) for sign-off."""
    from settlement.reports import money
    from settlement.use_cases.write_report import write_report

    require_output_file(out, "--out")
    settings = load_settings({"lake": lake, "data_path": data_path}, config)
    data = reading_ledger(settings, lambda ledger: write_report(ledger, epoch, out))
    verdict = "balanced" if data.conserved else "[bold red]NOT balanced[/]"
    stdout.print(
        f"epoch {epoch}: fees {money(data.epoch['fee_micros'])} {data.asset}, payable "
        f"{money(data.epoch['payable_micros'])}, conservation {verdict}, "
        f"{'settled' if data.settlement else 'not settled yet'} -> {out}",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    """Add the analytics commands to the `royalty` app."""
    app.command("export")(export)
    app.command("report")(report)
