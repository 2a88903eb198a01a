"""`royalty catalog grant-reader`: a SELECT-only PostgreSQL role for analysts, and its DSN."""

import os
from pathlib import Path
from typing import Annotated

import typer

from royalty.common import ConfigOption, LakeOption, env_prefix, load_settings, stderr, stdout
from royalty.common import fail as _fail
from royalty.exceptions import ConfigError
from schemas.errors import RoyaltyError

catalog_app = typer.Typer(help="The PostgreSQL catalog: roles for analysts.", no_args_is_help=True)
# Where the operator may hand over a chosen reader password (never a flag: argv is public).
reader_password_env = env_prefix + "READER_PASSWORD"


@catalog_app.command("grant-reader")
def grant_reader_command(
    role: Annotated[str, typer.Option("--role", help="Name of the SELECT-only login role to create or update.")],
    lake: LakeOption = None,
    config: ConfigOption = None,
    passfile: Annotated[
        Path | None,
        typer.Option(
            "--passfile",
            help="Write the reader's password to this libpq passfile (0600) and print a DSN without it.",
        ),
    ] = None,
    schema: Annotated[str, typer.Option("--schema", help="The catalog's PostgreSQL schema.")] = "public",
    writer_role: Annotated[
        str | None,
        typer.Option("--writer-role", help="Role the writers connect as (tables it creates later are granted)."),
    ] = None,
) -> None:
    """Create a SELECT-only PostgreSQL role on the catalog and print its reader DSN (`reader_lake`).

    --lake (or ROYALTY_LAKE) connects as a role that may create roles; tables the writers' role
    (--writer-role, default: that same role) creates later are granted too. The password is
    ROYALTY_READER_PASSWORD, or a generated one; it is printed only inside the reader DSN, and only
    when neither --passfile nor ROYALTY_READER_PASSWORD is given.
    """
    from ledger.reader_role import add_passfile_entry, check_passfile, generate_password, grant_reader

    settings = load_settings({"lake": lake}, config)
    try:
        if not settings.lake.startswith(("postgres:", "postgresql://", "postgres://")):
            raise ConfigError(
                "grant-reader needs a PostgreSQL catalog (--lake or ROYALTY_LAKE); an embedded (SQLite) ledger has "
                "no roles: give analysts read-only access to its folder instead (docs/operations.md)"
            )
        if passfile is not None:
            check_passfile(passfile)  # before any role is touched
        chosen = os.environ.get(reader_password_env)
        password = chosen or generate_password()
        grant = grant_reader(settings.lake, role, password, schema, writer_role)
        if passfile is not None:
            add_passfile_entry(passfile, grant)
    except RoyaltyError as error:
        _fail(error)
    stderr.print(
        f"role `{grant.role}`: SELECT on {grant.tables_granted} table(s) of schema `{grant.schema}` and on every "
        "table the writers create there later; no writes; sessions read-only",
        highlight=False,
    )
    if passfile is not None:
        stdout.file.write(f"{grant.dsn} passfile={passfile.resolve()}\n")
        stderr.print(f"password written to {passfile} (mode 600); set reader_lake to the DSN above", highlight=False)
    elif chosen:
        stdout.file.write(grant.dsn + "\n")
        stderr.print(f"password: the one in {reader_password_env}; keep it in the analysts' ~/.pgpass", highlight=False)
    else:
        stdout.file.write(f"{grant.dsn} password={password}\n")
        stderr.print(
            "the generated password is shown this once, in the DSN above: store it in the analysts' ~/.pgpass or "
            f"in {env_prefix}READER_LAKE (never on a command line), or rerun with --passfile",
            highlight=False,
        )


def register(app: typer.Typer) -> None:
    """Add `royalty catalog ...` to the `royalty` app."""
    app.add_typer(catalog_app, name="catalog")
