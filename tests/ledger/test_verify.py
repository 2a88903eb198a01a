"""`royalty verify`: passes on an untouched ledger, fails naming the file when one is changed or removed."""

import subprocess
from pathlib import Path

from ingest.sample import SampleTraffic
from ledger import Ledger
from tests.conftest import royalty_command
from tests.ledger.helpers import batch_of


def _ledger_with_two_files(lake: Path) -> list[Path]:
    traffic = SampleTraffic()
    with Ledger.open(lake) as ledger:
        ledger.append(*batch_of([*list(traffic.metered(300)), b"bad"]))
    return sorted((lake / "data").rglob("*.parquet"))


def _verify(lake: Path) -> subprocess.CompletedProcess:
    return subprocess.run(royalty_command("verify", "--lake", str(lake)), capture_output=True, text=True)


def test_verify_passes_on_an_untouched_ledger(lake_dir: Path) -> None:
    """A ledger written only by appends verifies with exit code 0."""
    _ledger_with_two_files(lake_dir)
    result = _verify(lake_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ledger verified" in result.stdout


def test_verify_fails_naming_an_edited_parquet_file(lake_dir: Path) -> None:
    """One byte changed inside a data file (same size) makes verify exit 1 and name that file."""
    files = _ledger_with_two_files(lake_dir)
    target = files[0]
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    result = _verify(lake_dir)
    assert result.returncode == 1
    assert target.name in result.stderr.replace("\n", "") and "contents changed" in result.stderr.replace("\n", " ")


def test_verify_fails_naming_a_deleted_parquet_file(lake_dir: Path) -> None:
    """A data file removed from disk makes verify exit 1 and say it is missing."""
    files = _ledger_with_two_files(lake_dir)
    files[-1].unlink()
    result = _verify(lake_dir)
    assert result.returncode == 1
    assert files[-1].name in result.stderr.replace("\n", "") and "missing" in result.stderr


def test_verify_fails_when_rows_were_deleted_through_duckdb(lake_dir: Path) -> None:
    """A DELETE made behind the ledger's back (a new snapshot with deletions) fails verification."""
    _ledger_with_two_files(lake_dir)
    with Ledger.open(lake_dir) as ledger:
        ledger.connection.execute("DELETE FROM lake.main.inference_metered WHERE input_tokens < 1000")
    result = _verify(lake_dir)
    assert result.returncode == 1
    assert "snapshot" in result.stderr and "delete" in result.stderr.lower()
