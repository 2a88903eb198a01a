"""Files no snapshot lists (left by killed appends) are reported by `verify` and removed only when old."""

import json
import os
import shutil
import sqlite3
import subprocess
import time
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner

from ingest.sample import SampleTraffic
from ledger import Ledger
from ledger.connection import ledger_id
from ledger.orphans import find_orphans, remove_orphans
from ledger.verify import verify
from royalty.cli import app
from tests.conftest import royalty_command
from tests.ledger.helpers import batch_of


def _backdate_history(catalog_file: Path, seconds: float) -> None:
    """Make the catalog's snapshots `seconds` older: a ledger that has been running that long."""
    with sqlite3.connect(catalog_file) as catalog:
        for snapshot_id, text in catalog.execute("SELECT snapshot_id, snapshot_time FROM ducklake_snapshot").fetchall():
            moved = datetime.fromisoformat(text.removesuffix("+00")) - timedelta(seconds=seconds)
            catalog.execute(
                "UPDATE ducklake_snapshot SET snapshot_time = ? WHERE snapshot_id = ?",
                [f"{moved.isoformat(sep=' ')}+00", snapshot_id],
            )


def _lake_with_strays(lake_dir: Path) -> tuple[list[Path], int]:
    with Ledger.open(lake_dir) as ledger:
        ledger.append(*batch_of(list(SampleTraffic().metered(200))))
        data = Path(ledger.location.data_path)
        identity, tip = ledger_id(ledger.connection), ledger.current_snapshot()
    _backdate_history(lake_dir / "catalog.sqlite", 2 * 24 * 3600)
    folder = data / "main" / "inference_metered" / "event_date=2026-11-23"
    folder.mkdir(parents=True, exist_ok=True)
    # Named as a killed append of this ledger leaves them: its id, the snapshot it started from, a batch id.
    strays = [
        folder / f"{identity}-s{tip}-{'a' * 32}-0000beef.parquet",
        folder / f"{identity}-s{tip}-{'b' * 32}-0001beef.parquet.tmp",
    ]
    for stray in strays:
        stray.write_bytes(b"PAR1 half written")
    (data / "notes.txt").write_text("not a ledger file")
    return strays, 200


def _rows(lake_dir: Path) -> int:
    with Ledger.open_read_only(lake_dir) as reader:
        (count,) = reader.connection.execute("SELECT count(*) FROM lake.main.inference_metered").fetchone()
        return int(count)


def test_verify_reports_stray_files_without_failing_and_removes_only_old_ones(lake_dir: Path) -> None:
    strays, events = _lake_with_strays(lake_dir)
    with Ledger.open_read_only(lake_dir) as reader:
        report = verify(reader)
        assert report.ok, report.problems
        assert [Path(o.path) for o in report.orphans or []] == sorted(strays)
        assert remove_orphans(report.orphans or [], age_s_min=3600) == []
    assert all(stray.exists() for stray in strays)
    old = time.time() - 7200
    os.utime(strays[0], (old, old))
    with Ledger.open_read_only(lake_dir) as reader:
        removed = remove_orphans(find_orphans(reader, set()) or [], age_s_min=3600)
    assert [Path(o.path) for o in removed] == [strays[0]]
    assert not strays[0].exists() and strays[1].exists()
    with Ledger.open_read_only(lake_dir) as reader:
        report = verify(reader)
        assert report.ok and report.files > 0
    assert _rows(lake_dir) == events


def test_the_cli_names_the_orphans_and_removes_them_on_request(lake_dir: Path) -> None:
    strays, events = _lake_with_strays(lake_dir)
    listed = subprocess.run(royalty_command("verify", "--lake", str(lake_dir)), capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert "2 file(s)" in listed.stdout and "--remove-orphans" in listed.stdout
    kept = subprocess.run(
        royalty_command("verify", "--lake", str(lake_dir), "--remove-orphans", "--json"), capture_output=True, text=True
    )
    assert json.loads(kept.stdout)["orphans_removed"] == []  # younger than a day
    removed = subprocess.run(
        royalty_command("verify", "--lake", str(lake_dir), "--remove-orphans", "--orphan-age-s-min", "0", "--json"),
        capture_output=True, text=True,
    )
    report = json.loads(removed.stdout)
    assert report["ok"] and sorted(report["orphans_removed"]) == sorted(map(str, strays))
    assert not any(stray.exists() for stray in strays)
    again = subprocess.run(royalty_command("verify", "--lake", str(lake_dir)), capture_output=True, text=True)
    assert again.returncode == 0 and "no snapshot" not in again.stdout
    assert _rows(lake_dir) == events


def test_remove_orphans_never_deletes_a_file_another_catalog_may_own(tmp_path: Path) -> None:
    """Two ledgers share one data folder, and a foreign Parquet file sits in it: removing orphans of the
    first (at any age) deletes only its own killed append's file; the other ledger's committed file and the
    foreign one survive, and the other ledger still verifies."""
    first, second = tmp_path / "first", tmp_path / "second"
    strays, events = _lake_with_strays(first)
    shared = first / "data"
    with Ledger.open(second, data_path=str(shared)) as other:
        other.append(*batch_of(list(SampleTraffic(seed=3).metered(50))))
    with Ledger.open_read_only(second, data_path=str(shared)) as reader:
        other_files = {Path(path) for (path,) in reader.connection.execute(
            "SELECT data_file FROM ducklake_list_files('lake', 'inference_metered')").fetchall()}
    foreign = shared / "main" / "inference_metered" / "part-00000-spark.parquet"
    pq.write_table(pa.table({"x": [1, 2, 3]}), foreign)
    before_names = f"{'c' * 32}-0000beef.parquet"  # a batch id and 8 hex digits: named before names had the id
    written_before = foreign.with_name(before_names)
    written_before.write_bytes(b"PAR1")
    result = CliRunner().invoke(app, ["verify", "--lake", str(first), "--remove-orphans", "--orphan-age-s-min", "0",
                                      "--json"])
    report = json.loads(result.output)
    assert report["ok"], report
    assert sorted(report["orphans_removed"]) == sorted(map(str, strays))
    assert other_files and all(path.exists() for path in other_files)
    assert foreign.exists() and written_before.exists()
    assert {o["path"] for o in report["orphans"] if not o["ours"]} >= {str(foreign), str(written_before)}
    with Ledger.open_read_only(second, data_path=str(shared)) as reader:
        assert verify(reader).ok
        (count,) = reader.connection.execute("SELECT count(*) FROM lake.main.inference_metered").fetchone()
    assert count == 50
    assert _rows(first) == events


def test_an_older_catalog_restored_over_a_live_folder_removes_nothing_of_its_newer_self(tmp_path: Path) -> None:
    """The catalog is put back to an earlier copy while the data folder keeps the files appended since: those
    files name the ledger's id, and snapshots the restored catalog lacks or committed after them; none is
    removed, nor is anything else while they are there, and the restored ledger still reads and verifies."""
    lake = tmp_path / "lake"
    traffic = SampleTraffic(seed=5)
    with Ledger.open(lake) as ledger:
        ledger.append(*batch_of(list(traffic.metered(50))))
    older = tmp_path / "catalog-at-backup.sqlite"
    shutil.copyfile(lake / "catalog.sqlite", older)
    with Ledger.open(lake) as ledger:
        for offset in (1_000, 2_000):
            ledger.append(*batch_of(list(traffic.metered(50)), first_offset=offset))
    newer_files = set((lake / "data").rglob("*.parquet"))
    # As time passes: the backup an hour old, the files appended since half an hour old, the restore now.
    _backdate_history(older, 3600)
    for path in newer_files:
        os.utime(path, (time.time() - 1800, time.time() - 1800))
    shutil.copyfile(older, lake / "catalog.sqlite")
    with Ledger.open(lake) as restored:  # the restored catalog goes on: its next snapshot is after the files
        restored.append(*batch_of(list(SampleTraffic(seed=6).metered(10)), topic="after-restore"))
    result = CliRunner().invoke(app, ["verify", "--lake", str(lake), "--remove-orphans", "--orphan-age-s-min", "0",
                                      "--json"])
    report = json.loads(result.output)
    assert report["ok"] and report["orphans_removed"] == [], report
    assert any(orphan["sibling"] for orphan in report["orphans"]), report["orphans"]
    assert all(path.exists() for path in newer_files)
    with Ledger.open_read_only(lake) as reader:
        (count,) = reader.connection.execute("SELECT count(*) FROM lake.main.inference_metered").fetchone()
    assert count == 60
