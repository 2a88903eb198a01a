"""What every `royalty` command module shares: the consoles, the ledger options, failing cleanly.

A module of its own because `royalty.cli` imports the command modules, and `python -m royalty.cli`
runs cli as `__main__`: importing these back from cli would execute it a second time.
"""

from typing import Annotated, NoReturn

import typer
from rich.console import Console

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
ConfigOption = Annotated[str | None, typer.Option("--config", help="TOML configuration file. [env ROYALTY_CONFIG]")]
# Overrides of the checks that keep money from moving on unverified data (settlement.input_checks): flags
# only, never settings, so that accepting a failed check is a decision made for one run.
AcceptUnverifiedOption = Annotated[
    bool,
    typer.Option(
        "--accept-unverified-files",
        help="Go on although data files this step reads fail their recorded checksum (after investigating).",
    ),
]
AcceptUnreconciledOption = Annotated[
    bool,
    typer.Option(
        "--accept-unreconciled",
        help="Go on although reconciliation rows are non-zero (after investigating).",
    ),
]


def fail(error: Exception, exit_code: int = 2) -> NoReturn:
    """Print `error` on standard error and exit with `exit_code` (2: the command could not do its work)."""
    from ledger.redact import redact  # here, not at the top: `ledger` imports DuckDB, slow for `--help`

    stderr.print(f"[bold red]error:[/] {redact(error)}", highlight=False)
    raise typer.Exit(exit_code)


def require_ledger(lake: str, data_path: str | None) -> None:
    """Refuse (exit 2) a location that holds no ledger, before any other work: a reading command creates nothing."""
    from ledger.connection import LedgerLocation
    from ledger.errors import LedgerNotFoundError

    try:
        location = LedgerLocation.parse(lake, data_path)
    except ValueError as error:
        fail(error)
    if not location.exists():
        fail(LedgerNotFoundError(location.display))
