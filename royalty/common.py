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


def fail(error: Exception, exit_code: int = 2) -> NoReturn:
    """Print `error` on standard error and exit with `exit_code` (2: the command could not do its work)."""
    stderr.print(f"[bold red]error:[/] {error}", highlight=False)
    raise typer.Exit(exit_code)
