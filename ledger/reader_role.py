"""A SELECT-only PostgreSQL role for analysts: the catalog itself refuses their writes.

`grant_reader` creates (or re-grants) a login role that may read every table of the catalog's
schema, now and later (`ALTER DEFAULT PRIVILEGES` for the role that runs it, which must be the
role the writers use, so the `ducklake_inlined_data_*` tables DuckLake creates later are covered),
and nothing else: no INSERT, UPDATE, DELETE, DDL, and its sessions start read-only. Whatever an
analyst's DuckDB runs through that role (`postgres_execute` included), PostgreSQL refuses writes.

The password is sent to the server already hashed (SCRAM-SHA-256, libpq's PQencryptPasswordConn),
so it appears in no server log. It is returned to the caller, who decides where it goes: a passfile
entry (nothing printed) or the one reader DSN the operator asked to see.
"""

import os
import re
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ledger.errors import LedgerError
from ledger.redact import redact

# PostgreSQL identifiers are at most 63 bytes; a plain lower-case name needs no quoting anywhere.
_role_name = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# 32 URL-safe bytes: 256 bits, beyond guessing; no character a passfile or DSN needs escaped.
generated_password_bytes = 32
connect_timeout_s = 10
# The DSN keys that say who connects and with what secret: replaced for the reader.
_identity_keys = ("user", "password", "passfile")


class ReaderRoleError(LedgerError):
    """The reader role could not be created or granted; nothing was granted past what the message says."""


@dataclass(frozen=True)
class ReaderGrant:
    """A granted reader role and how to connect as it."""

    role: str
    dsn: str  # `postgres:` catalog string of the reader, without its password
    schema: str
    tables_granted: int
    password: str = field(repr=False)
    host: str = ""
    port: str = ""
    dbname: str = ""


def generate_password() -> str:
    return secrets.token_urlsafe(generated_password_bytes)


def grant_reader(
    catalog: str, role: str, password: str, schema: str = "public", writer_role: str | None = None
) -> ReaderGrant:
    """Create or update `role` as a SELECT-only login on the catalog `catalog`.

    `catalog` connects as a role that may create roles (CREATEROLE or superuser); `writer_role` (default:
    that same role) is the role the ledger writers connect as, whose future tables the reader may read.
    """
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    if not _role_name.match(role):
        raise ReaderRoleError(
            f"role name `{role}` is not a plain PostgreSQL name (lower-case letters, digits, `_`, at most 63)"
        )
    dsn = catalog.removeprefix("postgres:")
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=connect_timeout_s) as connection:
            writer = writer_role or connection.info.user
            if role in (writer, connection.info.user):
                raise ReaderRoleError(
                    f"role `{role}` is a writer or the role this command connects as; name a new role"
                )
            _check_not_privileged(connection, role)
            hashed = connection.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256").decode()
            identifier = sql.Identifier(role)
            exists = connection.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone()
            verb = sql.SQL("ALTER ROLE" if exists else "CREATE ROLE")
            with connection.transaction():
                connection.execute(
                    sql.SQL(
                        "{} {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION PASSWORD {}"
                    ).format(verb, identifier, sql.Literal(hashed))
                )
                connection.execute(sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(identifier))
                connection.execute(
                    sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                        sql.Identifier(connection.info.dbname), identifier
                    )
                )
                names = {"schema": sql.Identifier(schema), "role": identifier, "writer": sql.Identifier(writer)}
                connection.execute(sql.SQL("GRANT USAGE ON SCHEMA {schema} TO {role}").format(**names))
                connection.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}").format(**names))
                connection.execute(
                    sql.SQL(
                        "ALTER DEFAULT PRIVILEGES FOR ROLE {writer} IN SCHEMA {schema} GRANT SELECT ON TABLES TO {role}"
                    ).format(**names)
                )
            (tables,) = connection.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s", [schema]).fetchone()
            info = connection.info
            reader = {k: v for k, v in conninfo_to_dict(dsn).items() if k not in _identity_keys}
            reader["user"] = role
            return ReaderGrant(
                role, "postgres:" + make_conninfo(**reader), schema, int(tables), password,
                str(info.host), str(info.port), str(info.dbname),
            )  # fmt: skip
    except psycopg.Error as error:
        raise ReaderRoleError(f"granting reader role `{role}` failed: {redact(error).strip()}") from None


def _check_not_privileged(connection, role: str) -> None:
    row = connection.execute(
        "SELECT rolsuper OR rolcreaterole OR rolcreatedb OR rolbypassrls OR rolreplication FROM pg_roles "
        "WHERE rolname = %s",
        [role],
    ).fetchone()
    if row is not None and row[0]:
        raise ReaderRoleError(
            f"role `{role}` exists with privileges beyond reading (superuser, createrole, createdb, bypassrls or "
            "replication); it was left unchanged: name a new role for analysts"
        )


def check_passfile(passfile: Path) -> None:
    """Refuse a passfile others may read (libpq ignores it, and it would expose the password)."""
    if passfile.exists():
        mode = passfile.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ReaderRoleError(
                f"passfile `{passfile}` is readable by others (mode {stat.S_IMODE(mode):o}); libpq ignores it: "
                f"chmod 600 {passfile} and run again"
            )


def add_passfile_entry(passfile: Path, grant: ReaderGrant) -> None:
    """Write the reader's password to a libpq passfile (made 0600; an existing one must not be readable by others)."""
    line = ":".join(_passfile_field(v) for v in (grant.host, grant.port, grant.dbname, grant.role, grant.password))
    check_passfile(passfile)
    if passfile.exists():
        kept = [entry for entry in passfile.read_text().splitlines() if entry.split(":")[:4] != line.split(":")[:4]]
    else:
        kept = []
    passfile.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write("\n".join([*kept, line]) + "\n")


def _passfile_field(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")
