"""Output that fits pipes and copy-paste (issue 21): nothing wrapped at 80 columns, numbers with thousands
separators, flags shown as flags with their defaults, hints that repeat the --lake they were given, and a
reader that stops early (`| head`) ends nothing in an error."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import typer.main

from royalty.cli import app
from royalty.common import lake_commands, with_lake
from tests.conftest import royalty_command


def _run(*args: str, cwd: Path | None = None, stdin: str = "") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROYALTY_")}
    return subprocess.run(
        royalty_command(*args), cwd=cwd, env=env, input=stdin, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty ledger, at a path long enough that any line naming it is wider than 80 columns."""
    folder = tmp_path_factory.mktemp("output") / ("a-ledger-folder-with-a-rather-long-name-" * 2) / "lake"
    assert _run("ingest", "--from-file", "-", "--lake", str(folder)).returncode == 0
    return folder


def test_lake_commands_are_the_commands_with_a_lake_option() -> None:
    group = typer.main.get_command(app)
    with_lake_option = {
        name
        for name, command in group.commands.items()
        if any("--lake" in getattr(param, "opts", ()) for param in command.params)
    }
    assert with_lake_option == lake_commands


def test_a_hint_repeats_the_lake_given_on_the_command_line() -> None:
    message = "run `royalty settle` first, then `royalty proof --json`; `royalty deploy` takes no ledger"
    assert with_lake(message, ["proof", "--lake", "/srv/my lake"]) == (
        "run `royalty settle --lake '/srv/my lake'` first, then `royalty proof --lake '/srv/my lake' --json`; "
        "`royalty deploy` takes no ledger"
    )
    assert with_lake(message, ["proof", "--lake=/srv/l"]).startswith("run `royalty settle --lake /srv/l` first")
    assert with_lake(message, ["proof"]) == message  # from the environment or a file: the hint works as it is
    migrate = "then run `royalty migrate --lake /srv/l`"
    assert with_lake(migrate, ["sql", "--lake", "/srv/l"]) == migrate


def test_an_error_hint_names_the_lake_on_one_unwrapped_line(lake: Path) -> None:
    result = _run("proof", "--lake", str(lake), "--account", "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed")
    assert result.returncode == 2
    [line] = result.stderr.splitlines()  # one line however long: nothing wrapped at 80 columns
    assert len(line) > 80 and f"`royalty settle --lake {lake}`" in line


def test_the_ingest_summary_is_one_line_with_thousands_separators(tmp_path: Path) -> None:
    sample = tmp_path / "sample.jsonl"
    produced = _run("produce-sample", "--events", "1500", "--to-file", str(sample))
    assert produced.returncode == 0 and "event=1,500" in produced.stderr
    lake = tmp_path / ("a-ledger-folder-with-a-rather-long-name-" * 2)
    result = _run("ingest", "--from-file", str(sample), "--lake", str(lake), "--log-format", "json")
    summary = [line for line in result.stderr.splitlines() if line.startswith("ingested ")]
    assert result.returncode == 0 and len(summary) == 1
    assert re.match(r"ingested \d,\d{3} messages: \d,\d{3} events, ", summary[0]), summary[0]


def test_help_shows_flags_as_flags_and_the_defaults() -> None:
    close = _run("close-epoch", "--help").stdout
    assert "<bool>" not in close and "  --dry-run  " in close
    sql = " ".join(_run("sql", "--help").stdout.split())
    assert "[default: ./lake; env ROYALTY_LAKE]" in sql and "[default 300]" in sql
    ingest = " ".join(_run("ingest", "--help").stdout.split())
    assert "[default: inference-events]" in ingest and "[default: 50,000]" in ingest


def test_csv_lines_end_in_a_line_feed_only(lake: Path) -> None:
    """A value read by a shell (`ACCOUNT=$(royalty sql --format csv ... | tail -1)`) carries no stray CR."""
    query = "SELECT a FROM (SELECT 'x' AS a UNION ALL SELECT 'y') ORDER BY a"
    result = _run("sql", "--lake", str(lake), "--format", "csv", query)
    assert result.returncode == 0 and result.stdout == "a\nx\ny\n"


def test_a_reader_that_stops_early_ends_nothing_in_an_error(lake: Path) -> None:
    """`royalty sql ... | head -1`: exit 0 and nothing on standard error, for a table and for CSV."""
    # More than a pipe holds (64 KiB), so that a write meets the closed pipe; a rich table is slow to lay out.
    for output_format, rows in (("table", 5_000), ("csv", 100_000)):
        process = subprocess.Popen(
            royalty_command("sql", "--lake", str(lake), "--format", output_format, f"SELECT range FROM range({rows})"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert process.stdout is not None and process.stdout.readline()
        process.stdout.close()  # as `head -1` does once it has its line
        _, errors = process.communicate(timeout=120)
        assert (process.returncode, errors.decode()) == (0, ""), output_format
