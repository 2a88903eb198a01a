"""The `royalty` command line as a newcomer meets it."""

import json
import subprocess
from pathlib import Path

import pytest

from schemas import event_types
from tests.conftest import royalty_command


def test_help_lists_the_commands() -> None:
    """`royalty --help` exits 0 and names every command."""
    result = subprocess.run(royalty_command("--help"), capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("sql", "verify", "schemas"):
        assert command in result.stdout


def test_schemas_export_writes_one_json_schema_per_event_type(tmp_path: Path) -> None:
    """`royalty schemas export DIR` writes a JSON Schema file for each of the five event types."""
    result = subprocess.run(royalty_command("schemas", "export", str(tmp_path / "out")), capture_output=True)
    assert result.returncode == 0, result.stderr
    files = sorted((tmp_path / "out").glob("*.schema.json"))
    assert [file.name for file in files] == sorted(f"{name}.schema.json" for name in event_types)
    metered = json.loads((tmp_path / "out" / "ai.inference.metered.v1.schema.json").read_text())
    assert metered["additionalProperties"] is False
    assert "fee_micros" in json.dumps(metered)


def test_sql_on_a_missing_ledger_says_so(tmp_path: Path) -> None:
    """A query against a folder with no ledger exits 2 with a message naming the folder."""
    result = subprocess.run(
        royalty_command("sql", "--lake", str(tmp_path / "nowhere"), "SELECT 1"), capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "no ledger" in result.stderr and "nowhere" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ingest", "--from-file", "-", "--batch-records-max", "5000000"], "`batch_records_max` is 5,000,000"),
        (["ingest", "--from-file", "-", "--batch-latency-ms-max", "0"], "`batch_latency_ms_max` is 0"),
        (["ingest", "--from-file", "-", "--batch-bytes-max", "2147483648"], "`batch_bytes_max` is 2,147,483,648"),
        (["sql", "--timeout-s", "99999", "SELECT 1"], "`query_s_max` is 99,999"),
    ],
)
def test_a_setting_out_of_its_bounds_is_refused_with_the_bounds(tmp_path: Path, args: list[str], message: str) -> None:
    """Named limits: an operator's out-of-range setting is a one-line error giving the allowed range, no traceback."""
    result = subprocess.run(
        royalty_command(*args, "--lake", str(tmp_path / "lake")), capture_output=True, text=True, input=""
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "it must be from" in result.stderr and "Traceback" not in result.stderr
