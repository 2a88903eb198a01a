"""Every command that reads a ledger refuses a path that holds none, and creates nothing there.

Only `royalty ingest` creates a ledger. `royalty demo` refuses a workdir that already holds one.
"""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from royalty.cli import app
from tests.support.postgres import PostgresServer

pytest_plugins = ("tests.support.postgres",)
runner = CliRunner()
account = "0x" + "11" * 20

# Each command with the arguments it needs besides --lake; the ledger check comes before any other work.
reading_commands = {
    "close-epoch": [],
    "close-epoch --dry-run": ["--dry-run"],
    "settle": [],
    "settle --dry-run": ["--dry-run"],
    "sync-claims": ["--rpc-url", "http://127.0.0.1:9"],
    "sql": ["SELECT 1"],
    "sql --print-attach": ["--print-attach"],
    "verify": [],
    "proof": ["--account", account],
    "claim --account": ["--account", account],
    "export": ["--epoch", "1", "--to", "{tmp}/exported"],
    "report": ["--epoch", "1", "--out", "{tmp}/report.html"],
    "backup": ["--to", "{tmp}/backup"],
    "migrate": [],
    "expire": [],
    "expire --dry-run": ["--dry-run"],
}


@pytest.mark.parametrize("name", reading_commands)
def test_a_command_on_a_missing_ledger_exits_2_and_creates_nothing(tmp_path: Path, name: str) -> None:
    lake = tmp_path / "nope"
    command = name.split()[0]
    extra = [argument.replace("{tmp}", str(tmp_path)) for argument in reading_commands[name]]
    result = runner.invoke(app, [command, "--lake", str(lake), *extra])
    assert result.exit_code == 2, result.output
    assert "no ledger at" in result.output and str(lake) in result.output.replace("\n", "")
    assert not lake.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == [], "the refused command wrote something"


@pytest.mark.parametrize("name", ["close-epoch", "sync-claims", "sql", "verify", "migrate"])
def test_a_command_on_an_empty_postgres_catalog_exits_2_and_creates_no_ledger(
    postgres_server: PostgresServer, tmp_path: Path, name: str
) -> None:
    """A PostgreSQL database holding no ledger stays empty: no DuckLake tables, no data folder."""
    database = f"missing_{name.replace('-', '_')}"
    catalog = postgres_server.create_database(database)
    data = tmp_path / "files"
    result = runner.invoke(app, [name, "--lake", catalog, "--data-path", str(data), *reading_commands[name]])
    assert result.exit_code == 2, result.output
    assert "no ledger at" in result.output
    tables = postgres_server.psql("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
                                  database=database)
    assert tables.strip() == "0", tables
    assert not data.exists()


def test_demo_refuses_a_workdir_holding_a_ledger_without_force(tmp_path: Path) -> None:
    """The ledger in WORKDIR/lake is untouched; nothing else is written to the workdir."""
    lake = tmp_path / "lake"
    lake.mkdir()
    (lake / "catalog.sqlite").write_bytes(b"a ledger the user cares about")
    result = runner.invoke(app, ["demo", "--workdir", str(tmp_path), "--events", "10"])
    assert result.exit_code == 2, result.output
    assert "--force" in result.output and "lake" in result.output
    assert (lake / "catalog.sqlite").read_bytes() == b"a ledger the user cares about"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["lake"]
