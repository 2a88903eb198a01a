"""The `royalty` command line: the single entry point of every job and tool."""

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from royalty.config import load_settings
from royalty.logs import configure_logging
from royalty.output import output_formats, render
from schemas.errors import RoyaltyError

app = typer.Typer(
    help="royalty-engine: event-sourced royalty accounting for community-owned AI models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
schemas_app = typer.Typer(help="The producer contract: event schemas.", no_args_is_help=True)
app.add_typer(schemas_app, name="schemas")

stdout = Console()
stderr = Console(stderr=True)

LakeOption = Annotated[
    str | None,
    typer.Option("--lake", help="Ledger: a directory, or a PostgreSQL catalog URL. [env ROYALTY_LAKE]"),
]
DataPathOption = Annotated[
    str | None,
    typer.Option("--data-path", help="Parquet folder (needed with PostgreSQL). [env ROYALTY_DATA_PATH]"),
]
ConfigOption = Annotated[
    str | None, typer.Option("--config", help="TOML configuration file. [env ROYALTY_CONFIG]")
]


def _fail(error: Exception, exit_code: int = 2) -> None:
    stderr.print(f"[bold red]error:[/] {error}", highlight=False)
    raise typer.Exit(exit_code)


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
    query: Annotated[str, typer.Argument(help="SQL to run (SELECT or EXPLAIN only).")],
    lake: LakeOption = None,
    data_path: DataPathOption = None,
    config: ConfigOption = None,
    output_format: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
    as_of_snapshot: Annotated[
        int | None, typer.Option("--as-of-snapshot", help="Answer as the ledger stood at this snapshot.")
    ] = None,
) -> None:
    """Run a read-only query against the ledger's analyst views."""
    from ledger import Ledger, define_views, run_query

    if output_format not in output_formats:
        _fail(ValueError(f"--format must be one of {', '.join(output_formats)}, not `{output_format}`"))
    settings = load_settings({"lake": lake, "data_path": data_path}, config)
    try:
        with Ledger.open_read_only(
            settings.lake, settings.data_path, snapshot_version=as_of_snapshot
        ) as ledger:
            define_views(ledger)
            result = run_query(ledger, query)
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
) -> None:
    """Prove the ledger is append-only and every data file is intact; exit 1 if not."""
    from ledger import Ledger
    from ledger.verify import verify as verify_ledger

    settings = load_settings({"lake": lake, "data_path": data_path}, config)
    try:
        with Ledger.open_read_only(settings.lake, settings.data_path) as ledger:
            report = verify_ledger(ledger)
    except RoyaltyError as error:
        _fail(error)
    if output_json:
        stdout.file.write(json.dumps({**vars(report), "ok": report.ok}) + "\n")
    else:
        stdout.print(
            f"checked {report.snapshots} snapshots and {report.files} data files "
            f"({report.bytes_checked} bytes)"
        )
        for problem in report.problems:
            stderr.print(f"[bold red]problem:[/] {problem}", highlight=False)
        stdout.print(
            "[green]ledger verified: append-only, every file intact[/]"
            if report.ok
            else f"[bold red]ledger NOT verified: {len(report.problems)} problem(s)[/]"
        )
    raise typer.Exit(0 if report.ok else 1)


def main() -> None:
    configure_logging()
    try:
        app()
    except RoyaltyError as error:
        stderr.print(f"[bold red]error:[/] {error}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
