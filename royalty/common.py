"""What every `royalty` command module shares: the consoles, the ledger options, failing cleanly.

A module of its own because `royalty.cli` imports the command modules, and `python -m royalty.cli`
runs cli as `__main__`: importing these back from cli would execute it a second time.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TextIO, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from ingest.kafka_security import KafkaSecurity
    from ledger import Ledger
    from royalty.config import Settings
    from settlement.engine import RegistryRules

# On a pipe or in a file nothing reads the output as a screen: rich's 80 columns would wrap commands, paths and
# figures (and split a hint someone copies), so lines are as long as they need and tables as wide.
pipe_width = 10_000


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """`royalty proof | head`: the reader has had enough. Stop as rich does (the rest of the output to
        /dev/null, no traceback), but with success: the command did its work."""
        import os

        self.quiet = True
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0)


def _console(stream: TextIO, to_stderr: bool) -> Console:
    isatty = getattr(stream, "isatty", None)
    width = None if isatty is not None and isatty() else pipe_width
    # soft_wrap: a long line is never broken by rich, only by the terminal (copying it gives one line back).
    return _Console(stderr=to_stderr, soft_wrap=True, width=width)


stdout = _console(sys.stdout, False)
stderr = _console(sys.stderr, True)

# The prefix of the settings' environment variables (royalty.config's `env_prefix`, kept equal by a test).
env_prefix = "ROYALTY_"


def load_settings(flags: dict[str, Any] | None = None, config_path: str | None = None) -> Settings:
    """`royalty.config.load_settings`, imported on the first call: pydantic-settings alone takes ~0.2 s of CPU,
    which `royalty --help` and every command's help need not pay (tests/test_cli_startup.py)."""
    from royalty.config import load_settings as load

    settings = load(flags, config_path)
    _declare_settlement_with_ledger()
    if (settings.data_path or "").startswith("s3://"):
        _configure_object_storage(settings)
    return settings


def _declare_settlement_with_ledger() -> None:
    """Every command loads its settings before it opens a ledger: the settlement's tables and views are declared
    with the ledger here, explicitly (importing a settlement module declares nothing), so `verify` and `backup` check
    the settlement's inlined tables too. Here rather than at start-up: a command's `--help` imports no Arrow."""
    from settlement.use_cases.ledger_setup import register_with_ledger

    register_with_ledger()


def _configure_object_storage(settings: Settings) -> None:
    """Hand the `s3_*` settings (else the AWS variables) to the ledger for an `s3://` data path."""
    from ledger.object_store import configure  # only now: `ledger` imports DuckDB, slow for `--help`

    secret = settings.s3_secret_access_key
    configure(
        settings.s3_access_key_id,
        secret.get_secret_value() if secret is not None else None,
        settings.s3_endpoint_url,
        settings.s3_region,
        settings.s3_url_style,
    )

LakeOption = Annotated[
    str | None,
    typer.Option(
        "--lake", help="Ledger: a directory, or a PostgreSQL catalog URL. [default: ./lake; env ROYALTY_LAKE]"
    ),
]
DataPathOption = Annotated[
    str | None,
    typer.Option(
        "--data-path",
        help="Parquet folder or s3://bucket/prefix (needed with PostgreSQL). [env ROYALTY_DATA_PATH]",
    ),
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


# Exit codes of a command that could not do its work: 75 (EX_TEMPFAIL, sysexits.h) when retrying it as it is
# may succeed (a busy or unreachable catalog, a node that is down), so cron or Airflow retries; 2 otherwise.
exit_permanent = 2
exit_transient = 75


def exit_code_of(error: BaseException) -> int:
    """75 for an error marked `transient`, 2 for any other."""
    return exit_transient if getattr(error, "transient", False) else exit_permanent


def fail(error: Exception, exit_code: int | None = None) -> NoReturn:
    """Print `error` on standard error and exit with `exit_code` (default: `exit_code_of(error)`)."""
    from ledger.redact import redact  # here, not at the top: `ledger` imports DuckDB, slow for `--help`

    # escaped: a message may quote brackets (`pip install -e '.[embedded]'`, a path) that rich would eat as markup
    stderr.print(f"[bold red]error:[/] {escape(redact(with_lake(str(error))))}", highlight=False, soft_wrap=True)
    raise typer.Exit(exit_code_of(error) if exit_code is None else exit_code)


T = TypeVar("T")


def reading_ledger(settings: Settings, work: Callable[[Ledger], T]) -> T:
    """`work(ledger)` on the ledger opened read-only, through the analysts' reader role when one is set
    (`reader_lake`); a `RoyaltyError` ends the command with its message and exit code."""
    from ledger import Ledger
    from schemas.errors import RoyaltyError

    try:
        with Ledger.open_read_only(settings.reader_lake or settings.lake, settings.data_path) as ledger:
            return work(ledger)
    except RoyaltyError as error:
        fail(error)


@contextmanager
def writing_ledger(settings: Settings, label: str) -> Iterator[tuple[Ledger, Callable[[str, int, int], None]]]:
    """The ledger (which must exist) opened for writing, with a progress bar on standard error starting at `label`:
    yields the ledger and `progress(step, done, total)`, which names the step and moves the bar."""
    from rich.progress import Progress

    from ledger import Ledger

    with (
        Ledger.open(settings.lake, settings.data_path, create=False) as ledger,
        Progress(console=stderr, transient=True) as bar,
    ):
        task = bar.add_task(label, total=None)

        def progress(step: str, done: int, total: int) -> None:
            bar.update(task, description=step, completed=done, total=total)

        yield ledger, progress


# The commands that read a ledger from --lake (tests/test_cli_output.py keeps this equal to the app's).
lake_commands = frozenset(
    {
        "backup", "claim", "claims-page", "close-epoch", "compact", "expire", "export", "ingest", "migrate", "proof",
        "publish", "receipt", "report", "settle", "sql", "sync-claims", "sync-holders", "sync-registry", "verify",
    }
)  # fmt: skip


def with_lake(message: str, argv: list[str] | None = None) -> str:
    """`message` with `--lake X` added to each `royalty <command>` hint it quotes, when this run was given
    `--lake X` on its command line: the hint then works when copied (settings from the environment or a TOML
    file apply to the hint as they are). A hint naming --lake already is left alone."""
    import re
    import shlex

    argv = sys.argv[1:] if argv is None else argv
    lake = next((argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--lake"), None)
    lake = lake or next((arg.removeprefix("--lake=") for arg in argv if arg.startswith("--lake=")), None)
    if lake is None:
        return message

    def add(match: re.Match[str]) -> str:
        command, rest = match.group(1), match.group(2)
        if command not in lake_commands or "--lake" in rest:
            return match.group(0)
        return f"`royalty {command} --lake {shlex.quote(lake)}{rest}`"

    return re.sub(r"`royalty ([a-z-]+)([^`]*)`", add, message)


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


def require_output_file(path: Path, flag: str) -> None:
    """Refuse (exit 2) an output file path that cannot be written: a folder, or inside a missing folder."""
    if path.is_dir():
        fail(ValueError(f"{flag} `{path}` is a folder; give a file path, e.g. {flag} {path / 'report.html'}"))
    if not path.parent.is_dir():
        fail(
            ValueError(
                f"{flag} `{path}`: the folder `{path.parent}` does not exist; create it (mkdir -p {path.parent}) "
                f"or give another {flag}"
            )
        )


def require_output_folder(path: Path, flag: str) -> None:
    """Refuse (exit 2) an output folder path that is a file (or lies under one)."""
    for part in (path, *path.parents):
        if part.exists() and not part.is_dir():
            fail(ValueError(f"{flag} `{path}`: `{part}` is a file, not a folder; give a folder (created if missing)"))


def registry_rules(settings: Settings) -> RegistryRules:
    """The operator registry's rules (`settlement.engine.authority`) from the settings."""
    from settlement.engine import RegistryRules

    excluded = (*settings.holder_excluded, *([settings.distributor] if settings.distributor else []))
    return RegistryRules(
        dict(settings.registry_sources),
        tuple(settings.reversal_sources),
        settings.policy_notice_s,
        excluded,
        settings.holder_dust_units_min,
    )


def kafka_security(settings: Settings) -> KafkaSecurity:
    """How the Kafka clients authenticate (`ingest.kafka_security`), checked: a bad combination is a clear error."""
    from ingest.kafka_security import KafkaSecurity

    security = KafkaSecurity(
        settings.kafka_security_protocol,
        settings.kafka_sasl_mechanism,
        settings.kafka_sasl_username,
        settings.kafka_sasl_password,
        settings.kafka_ssl_cafile,
        settings.kafka_ssl_certfile,
        settings.kafka_ssl_keyfile,
        settings.kafka_ssl_password,
        settings.kafka_ssl_check_hostname,
    )
    security.check()
    return security


def check_address(value: str | None) -> str | None:
    """`value` if it is an address a wallet would accept (typer.BadParameter otherwise): 0x + 40 hex digits, in one
    case or with a valid EIP-55 checksum (a mixed-case address with a wrong one is a typo). A typer callback."""
    return _checked_address(value, payout=False)


def check_payout_address(value: str | None) -> str | None:
    """`check_address` for an address that receives payouts: the zero address is refused too. A typer callback."""
    return _checked_address(value, payout=True)


def _checked_address(value: str | None, payout: bool) -> str | None:
    if value is None:
        return None
    import re

    from eth_utils import is_checksum_address  # only now: eth-utils is slow to import

    if not re.fullmatch(r"0x[0-9a-fA-F]{40}", value):
        raise typer.BadParameter(f"`{value}` is not an address (0x followed by 40 hex digits)")
    body = value[2:]
    if body not in (body.lower(), body.upper()) and not is_checksum_address(value):
        raise typer.BadParameter(
            f"`{value}` fails its EIP-55 checksum (the mixed case encodes one), as a mistyped address does; copy it "
            "again from its source"
        )
    if payout and int(body, 16) == 0:
        raise typer.BadParameter("the zero address cannot be a payout address: tokens claimed for it are lost")
    return value
