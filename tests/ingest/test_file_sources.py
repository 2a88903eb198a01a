"""File backfills are known by their content, not their path: nothing read is silently skipped.

The `royalty` CLI runs on real DuckLake ledgers with `produce-sample --to-file` traffic. Each
scenario is compared with a reference ledger that ingested the same content once, in one go:
same event ids, same dead letters (by raw SHA-256 and reason).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from ingest.errors import IngestSourceRacedError
from ingest.service import IngestService
from ingest.sources import FileSource
from ledger import IngestBatch, Ledger, PartitionOffsets
from schemas import BatchDecoder
from schemas.arrow import ledger_schemas
from tests.conftest import repo_root, royalty_command


def produce(path: Path, events: int, seed: int = 7) -> None:
    subprocess.run(
        royalty_command("produce-sample", "--to-file", str(path), "--events", str(events), "--seed", str(seed)),
        check=True,
        capture_output=True,
    )


def cli_ingest(lake: Path, *files: str, stdin: bytes | None = None) -> str:
    """Run `royalty ingest --from-file ...`; return its stderr with the line wrapping undone."""
    arguments = [item for name in files for item in ("--from-file", name)]
    result = subprocess.run(
        royalty_command("ingest", *arguments, "--lake", str(lake), "--log-format", "text"),
        input=stdin if stdin is not None else b"",
        capture_output=True,
    )
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    return " ".join(stderr.split())


def ingest_in_process(lake: Path, *paths: str) -> list[str]:
    """The same ingest in this process (faster); returns what the source reported for each file."""
    notes: list[str] = []
    with Ledger.open(str(lake)) as ledger:
        service = IngestService(
            ledger, lambda _: FileSource(list(paths), ledger, report=notes.append), "USDC", 50_000, 50, "test"
        )
        service.run(until_idle_s=0.0)
    return [" ".join(note.split()) for note in notes]


def stored(lake: Path) -> dict[str, list]:
    """What the ledger holds: every event id, every dead letter's raw SHA-256 and reason."""
    with Ledger.open_read_only(str(lake)) as ledger:
        connection = ledger.connection
        events = sorted(
            row
            for table in ledger_schemas
            for row in connection.execute(f"SELECT event_id FROM lake.main.{table}").fetchall()
        )
        dead_letters = sorted(connection.execute("SELECT raw_sha256, reason FROM lake.main.dead_letter").fetchall())
    return {"events": events, "dead_letters": dead_letters}


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sample") / "sample.jsonl"
    produce(path, 3_500)
    return path


@pytest.fixture(scope="module")
def reference(sample: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list]:
    """The sample ingested once, whole."""
    lake = tmp_path_factory.mktemp("reference") / "lake"
    ingest_in_process(lake, str(sample))
    return stored(lake)


def test_three_different_stdin_streams_store_every_line(sample: Path, reference: dict, tmp_path: Path) -> None:
    """Issue 12: three stdin streams stored 1,000 + 0 + 500 of 3,500 lines (all remembered as `file:-`)."""
    lines = sample.read_bytes().splitlines(keepends=True)
    lake = tmp_path / "lake"
    reports = [cli_ingest(lake, "-", stdin=b"".join(part)) for part in (lines[:1000], lines[1000:2000], lines[2000:])]

    assert stored(lake) == reference
    assert all("stdin: skipped 0 lines: stdin is never resumed by position" in report for report in reports)
    assert [f"`file:-{suffix}`" in report for report, suffix in zip(reports, ("", "#2", "#3"), strict=True)] == [
        True
    ] * 3


def test_a_file_regenerated_at_the_same_path_is_read_as_a_new_source(tmp_path: Path) -> None:
    """Issue 12: a regenerated file was resumed by line position (5,009 events stored instead of ~7,000)."""
    path = tmp_path / "traffic.jsonl"
    produce(path, 2_000)
    first = tmp_path / "first.jsonl"
    shutil.copy(path, first)
    lake = tmp_path / "lake"
    cli_ingest(lake, str(path))
    produce(path, 3_000, seed=9)
    report = cli_ingest(lake, str(path))

    reference = tmp_path / "reference"
    ingest_in_process(reference, str(first), str(path))
    assert stored(lake) == stored(reference)
    assert f"`{path}`: skipped 0 lines: its content differs from what source `file:{path}` read" in report
    assert f"read in full as source `file:{path}#2`" in report


def test_an_appended_log_resumes_after_what_was_read_and_says_so(sample: Path, reference: dict, tmp_path: Path) -> None:
    lines = sample.read_bytes().splitlines(keepends=True)
    log = tmp_path / "log.jsonl"
    log.write_bytes(b"".join(lines[:1000]))
    lake = tmp_path / "lake"
    ingest_in_process(lake, str(log))
    with log.open("ab") as handle:
        handle.write(b"".join(lines[1000:]))
    report = cli_ingest(lake, str(log))

    assert stored(lake) == reference
    size_bytes = len(b"".join(lines[:1000]))
    assert f"`{log}`: skipped 1,000 lines already read: its first {size_bytes:,} bytes are unchanged" in report
    assert "reading on from line 1,001" in report


def test_a_last_line_without_its_end_that_grew_is_not_skipped(sample: Path, reference: dict, tmp_path: Path) -> None:
    """A log read while a line was half written: the completed line is read, not skipped by position."""
    content = sample.read_bytes()
    cut = content.index(b"\n", len(content) // 2) - 40  # in the middle of a line
    log = tmp_path / "log.jsonl"
    log.write_bytes(content[:cut])
    lake = tmp_path / "lake"
    ingest_in_process(lake, str(log))
    log.write_bytes(content)
    (report,) = ingest_in_process(lake, str(log))

    assert "the line read last had no line end then, and has grown since" in report
    after = stored(lake)
    assert after["events"] == reference["events"]
    # The half line stays a dead letter of what was read then; every other one is stored once.
    assert len(after["dead_letters"]) == len(reference["dead_letters"]) + 1
    assert set(after["dead_letters"]) >= set(reference["dead_letters"])


def test_the_same_content_under_another_name_or_on_stdin_stores_nothing_again(
    sample: Path, reference: dict, tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    ingest_in_process(lake, str(sample))
    copy = tmp_path / "renamed.jsonl"
    shutil.copy(sample, copy)
    (renamed,) = ingest_in_process(lake, str(copy))
    resent = cli_ingest(lake, "-", stdin=sample.read_bytes())

    assert stored(lake) == reference  # no dead letter stored twice, no event
    lines = len(sample.read_bytes().splitlines())
    assert f"skipped {lines:,} lines already read" in renamed and f"read before as `{sample}`" in renamed
    assert f"ingested {lines:,} messages: 0 events, {lines:,} duplicates dropped, 0 dead letters" in resent


def test_a_position_recorded_before_fingerprints_is_trusted_once_with_a_warning(
    sample: Path, reference: dict, tmp_path: Path
) -> None:
    """An offset from an older ledger (`file:<path>`, no fingerprint) resumes once, and is checked from then on."""
    lines = sample.read_bytes().splitlines()
    lake = tmp_path / "lake"
    with Ledger.open(str(lake)) as ledger:  # what ingest stored before this change: offsets only
        topic = f"file:{sample}"
        batch = IngestBatch.from_messages(lines[:1000], [topic] * 1000, [0] * 1000, list(range(1000)), BatchDecoder())
        ledger.append(batch, [PartitionOffsets(topic, 0, 0, 1000)])
    trusted = cli_ingest(lake, str(sample))
    (checked,) = ingest_in_process(lake, str(sample))

    assert stored(lake) == reference
    assert f"`{sample}`: skipped 1,000 lines already read, by the position recorded for `{topic}`" in trusted
    assert "trusted this once without a check" in trusted
    assert f"skipped {len(lines):,} lines already read: its first" in checked and "trusted" not in checked


def test_two_inputs_of_one_run_with_the_same_content_store_it_once(
    sample: Path, reference: dict, tmp_path: Path
) -> None:
    copy = tmp_path / "copy.jsonl"
    shutil.copy(sample, copy)
    lake = tmp_path / "lake"
    ingest_in_process(lake, str(sample), str(copy))
    assert stored(lake) == reference


def test_the_recorded_fingerprint_is_the_sha256_of_the_bytes_read(sample: Path, tmp_path: Path) -> None:
    """Operators can check a position with `head -c SIZE FILE | sha256sum`."""
    lake = tmp_path / "lake"
    ingest_in_process(lake, str(sample))
    with Ledger.open(str(lake)) as ledger:
        (position,) = ledger.file_sources().values()
    content = sample.read_bytes()
    assert position.prefix_size_bytes == len(content)
    assert position.next_offset == len(content.splitlines())
    assert position.prefix_sha256 == hashlib.sha256(content).hexdigest()


def test_a_file_another_process_is_ingesting_stops_with_nothing_of_the_batch_written(
    sample: Path, tmp_path: Path
) -> None:
    """Two backfills of one new file at once meet at the offsets fence; the second stops, saying what to do."""
    lake = tmp_path / "lake"
    topic = f"file:{sample}"
    rival = sample.read_bytes().splitlines()[:10]

    class RacedSource(FileSource):
        def seek(self, stored_offsets: dict[tuple[str, int], int]) -> None:
            super().seek(stored_offsets)
            if not self.notes[1:]:  # the first seek only: the other process appends after it
                batch = IngestBatch.from_messages(rival, [topic] * 10, [0] * 10, list(range(10)), BatchDecoder())
                ledger.append(batch, [PartitionOffsets(topic, 0, 0, 10)])

    with Ledger.open(str(lake)) as ledger:
        service = IngestService(ledger, lambda _: RacedSource([str(sample)], ledger), "USDC", 50_000, 50, "test")
        with pytest.raises(IngestSourceRacedError, match="run this command again: it resumes after what is stored"):
            service.run(until_idle_s=0.0)
        (batches,) = ledger.connection.execute("SELECT count(*) FROM lake.main.ingest_batch").fetchone()
    assert batches == 1  # the other process's only


def test_a_ledger_of_format_1_migrated_takes_file_backfills_by_content(sample: Path, tmp_path: Path) -> None:
    """A ledger written before fingerprints (its file offsets have none) migrates, then fingerprints what it reads."""
    with tarfile.open(repo_root / "tests" / "fixtures" / "ledger_format_1.tar.gz") as archive:
        archive.extractall(tmp_path, filter="data")
    lake = tmp_path / "lake"
    migrated = subprocess.run(royalty_command("migrate", "--lake", str(lake)), capture_output=True, text=True)
    assert migrated.returncode == 0, migrated.stderr
    with Ledger.open(str(lake)) as ledger:
        legacy = {topic for topic, _ in ledger.stored_offsets() if topic.startswith("file:")}
        assert legacy and not ledger.file_sources()  # offsets of files, without fingerprints

    report = cli_ingest(lake, str(sample))
    again = cli_ingest(lake, str(sample))
    with Ledger.open(str(lake)) as ledger:
        assert set(ledger.file_sources()) == {f"file:{sample}"}
    assert f"`{sample}`: skipped 0 lines: a source not read before" in report
    lines = len(sample.read_bytes().splitlines())
    assert f"skipped {lines:,} lines already read" in again and "ingested 0 messages" in again
