"""Ordinary mistakes a new user makes get a message saying what to do, and an exit code; never a traceback.

Each case was a Python traceback (or a hang) before issue 21. The commands run as a user runs them: a
subprocess in an empty folder, with no `ROYALTY_*` variable set.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from tests.conftest import royalty_command


def run(tmp_path: Path, *args: str, env: dict[str, str] | None = None, stdin: str = "") -> tuple[int, str]:
    """Exit code and standard error (line wrapping undone) of `royalty ARGS` run in `tmp_path`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ROYALTY_")}
    result = subprocess.run(
        royalty_command(*args),
        cwd=tmp_path,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        input=stdin,
        timeout=120,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, " ".join(result.stderr.split())


def test_ingest_into_a_lake_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a ledger")
    code, message = run(tmp_path, "ingest", "--lake", "notes.txt", "--from-file", "-")
    assert code == 2 and "notes.txt`: it is a file, not a folder" in message
    assert "give --lake a folder" in message
    code, message = run(tmp_path, "ingest", "--lake", "notes.txt/lake", "--from-file", "-")
    assert code == 2 and "a part of the path is a file" in message
    assert (tmp_path / "notes.txt").read_text() == "not a ledger"


def test_report_out_in_a_missing_folder_or_at_a_folder(tmp_path: Path) -> None:
    code, message = run(tmp_path, "report", "--epoch", "1", "--out", "missing/report.html")
    assert code == 2 and "the folder `missing` does not exist" in message and "mkdir -p missing" in message
    (tmp_path / "out").mkdir()
    code, message = run(tmp_path, "report", "--epoch", "1", "--out", "out")
    assert code == 2 and "--out `out` is a folder" in message and "out/report.html" in message


def test_export_to_a_file(tmp_path: Path) -> None:
    (tmp_path / "exports").write_text("")
    code, message = run(tmp_path, "export", "--epoch", "1", "--to", "exports")
    assert code == 2 and "`exports` is a file, not a folder" in message


def test_produce_sample_without_a_destination_names_both_flags(tmp_path: Path) -> None:
    code, message = run(tmp_path, "produce-sample", "--events", "10")
    assert code == 2 and "--to-file PATH" in message and "--bootstrap-servers HOST:PORT" in message


def test_produce_sample_events_must_be_positive(tmp_path: Path) -> None:
    result = subprocess.run(
        royalty_command("produce-sample", "--events", "-5", "--to-file", "x.jsonl"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "--events" in result.stderr and "greater than or equal to 1" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "x.jsonl").exists()


def test_ingest_without_a_source_says_which_flag_is_missing(tmp_path: Path) -> None:
    code, message = run(tmp_path, "ingest", "--lake", "lake")
    assert code == 2 and "no source to ingest" in message
    assert "--bootstrap-servers HOST:PORT" in message and "--from-file PATH" in message
    assert not (tmp_path / "lake").exists()


def test_ingest_from_a_broker_never_reached_exits_75_after_the_bound(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, message = run(
        tmp_path,
        "ingest",
        "--lake",
        "lake",
        "--bootstrap-servers",
        f"127.0.0.1:{port}",
        env={"ROYALTY_BROKER_UNREACHABLE_S_MAX": "1"},
    )
    assert code == 75
    assert f"no Kafka broker answered at `127.0.0.1:{port}`" in message and "broker_unreachable_s_max" in message


checksummed = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"  # EIP-55's own example
mistyped = checksummed[:-1] + "D"  # one letter's case changed: the checksum fails
zero = "0x" + "0" * 40


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["proof", "--account", mistyped], "fails its EIP-55 checksum"),
        (["claim", "--account", mistyped, "--lake", "lake"], "fails its EIP-55 checksum"),
        (["settle", "--distributor", mistyped], "fails its EIP-55 checksum"),
        (["proof", "--account", zero], "the zero address cannot be a payout address"),
        (["claim", "--account", zero, "--lake", "lake"], "the zero address cannot be a payout address"),
        (["registry", "set-payout", zero], "the zero address cannot be a payout address"),
        (["proof", "--account", "0x123"], "is not an address"),
        (["demo", "--events", "0"], "greater than or equal to 1"),
        (["produce-sample", "--events", "0", "--to-file", "x.jsonl"], "greater than or equal to 1"),
    ],
)
def test_a_mistyped_address_the_zero_payout_address_and_no_events_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    """In process (the checks run while the arguments are parsed, before any work): exit 2 and the reason."""
    from typer.testing import CliRunner

    from royalty.cli import app

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, args)
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and message in text, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no crash


def test_an_address_in_one_case_or_checksummed_passes_the_check() -> None:
    from royalty.common import check_address, check_payout_address

    for address in (checksummed, checksummed.lower(), "0x" + checksummed[2:].upper()):
        assert check_payout_address(address) == address
    assert check_address(zero) == zero  # only a payout address may not be zero
