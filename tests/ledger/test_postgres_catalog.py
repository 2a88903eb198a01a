"""The ledger on a PostgreSQL DuckLake catalog behaves as on the embedded SQLite one, and takes concurrent writers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from ingest.sample import SampleTraffic, conflicting_duplicate
from ledger import Ledger, LedgerOffsetsFencedError, LedgerReadOnlyError, define_views, run_query
from ledger.batch import FileSourcePosition
from ledger.verify import verify
from tests.conftest import repo_root, royalty_command
from tests.ledger.helpers import batch_of

if TYPE_CHECKING:
    from tests.support.postgres import PostgresServer

pytest_plugins = ("tests.support.postgres",)

_appender = [sys.executable, "-m", "tests.ledger.appender"]
_environment = {**os.environ, "PYTHONPATH": str(repo_root)}


@dataclass(frozen=True)
class Lake:
    """Where one test's ledger lives: `Ledger.open(lake.location, lake.data_path)` and the CLI options."""

    location: str
    data_path: str | None

    def open(self) -> Ledger:
        return Ledger.open(self.location, self.data_path)

    def open_read_only(self, snapshot_version: int | None = None) -> Ledger:
        return Ledger.open_read_only(self.location, self.data_path, snapshot_version=snapshot_version)

    def cli_options(self) -> list[str]:
        return ["--lake", self.location, *(["--data-path", self.data_path] if self.data_path else [])]

    def parquet_files(self) -> list[Path]:
        root = Path(self.data_path) if self.data_path else Path(self.location) / "data"
        return sorted(root.rglob("*.parquet"))


@pytest.fixture
def postgres_lake(request: pytest.FixtureRequest, tmp_path: Path) -> Lake:
    """A fresh ledger on its own database of the session's PostgreSQL server, Parquet files under tmp_path."""
    server: PostgresServer = request.getfixturevalue("postgres_server")
    catalog = server.create_database(f"lake_{uuid.uuid4().hex[:12]}")
    return Lake(catalog, str(tmp_path / "data"))


@pytest.fixture(params=["sqlite", "postgres"])
def lake(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Lake]:
    """A fresh ledger on each catalog backend: a SQLite-catalog folder, or a PostgreSQL database plus data path."""
    if request.param == "sqlite":
        yield Lake(str(tmp_path / "lake"), None)
    else:
        yield request.getfixturevalue("postgres_lake")


def _count(lake: Lake, topic: str) -> tuple[int, int]:
    with lake.open_read_only() as reader:
        (count, distinct) = reader.connection.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM lake.main.inference_metered WHERE kafka_topic = ?",
            [topic],
        ).fetchone()
    return int(count), int(distinct)


def test_duplicates_are_dropped_and_conflicting_ones_dead_lettered(lake: Lake) -> None:
    """Resending events (same and different content) across and within batches stores each id once, per backend."""
    values = list(SampleTraffic().metered(500))
    with lake.open() as ledger:
        first = ledger.append(*batch_of([*values, values[3]]))
        assert (first.events, first.duplicates, first.dead_letters) == (500, 1, 0)
        resent = [*values[:100], conflicting_duplicate(values[7])]
        second = ledger.append(*batch_of(resent, first_offset=501))
        assert (second.events, second.duplicates, second.dead_letters) == (0, 100, 1)
        assert second.snapshot_id > first.snapshot_id == ledger.current_snapshot() - 1
    assert _count(lake, "t") == (500, 500)
    with lake.open_read_only() as reader:
        (reason, field, offset) = reader.connection.execute(
            "SELECT reason, error_field, kafka_offset FROM lake.main.dead_letter"
        ).fetchone()
    assert "conflicting duplicate" in reason and json.loads(values[7])["id"] in reason
    assert (field, offset) == ("id", 601)


def test_bad_messages_become_dead_letters_and_good_ones_read_back_through_views(lake: Lake) -> None:
    """Invalid messages are stored once with raw bytes and position; the good ones are readable via analyst SQL."""
    good = list(SampleTraffic().metered(10))
    values = [*good[:5], b"\xffgarbage", *good[5:]]
    with lake.open() as ledger:
        result = ledger.append(*batch_of(values, topic="events", partition=3, first_offset=40))
        assert (result.events, result.dead_letters) == (10, 1)
    with lake.open_read_only() as reader:
        define_views(reader)
        dead = run_query(reader, "SELECT * FROM dead_letters").to_pylist()
        ids = run_query(reader, "SELECT event_id FROM inference_events ORDER BY event_id").column(0).to_pylist()
        with pytest.raises(LedgerReadOnlyError, match="read-only"):
            run_query(reader, "DELETE FROM lake.main.inference_metered")
    assert [(d["kafka_partition"], d["kafka_offset"], d["raw"]) for d in dead] == [(3, 45, b"\xffgarbage")]
    assert ids == sorted(json.loads(value)["id"] for value in good)


def test_offsets_are_stored_with_the_rows_and_a_stale_batch_is_fenced(lake: Lake) -> None:
    """Offsets advance with each append and survive a reopen; a batch starting before them writes nothing."""
    values = list(SampleTraffic().metered(20))
    with lake.open() as ledger:
        ledger.append(*batch_of(values[:10], topic="a", partition=1, first_offset=0))
        ledger.append(*batch_of(values[:4], topic="b", partition=0, first_offset=7))
        snapshot = ledger.current_snapshot()
        with pytest.raises(LedgerOffsetsFencedError, match="starts at 5"):
            ledger.append(*batch_of(values[5:15], topic="a", partition=1, first_offset=5))
        assert ledger.current_snapshot() == snapshot
    with lake.open() as ledger:
        assert ledger.stored_offsets() == {("a", 1): 10, ("b", 0): 11}
        ledger.append(*batch_of(values[10:], topic="a", partition=1, first_offset=10))
    with lake.open_read_only() as reader:
        assert reader.stored_offsets() == {("a", 1): 20, ("b", 0): 11}
    with lake.open_read_only(snapshot_version=snapshot) as as_of:
        assert as_of.stored_offsets() == {("a", 1): 10, ("b", 0): 11}


def test_a_writer_keeps_the_stored_offsets_yet_is_fenced_by_another_writers_offsets(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fence reads `ingest_offset` once per writer, not in every append (issue 19: that scan grew with the
    ledger's age); a snapshot of another writer that stored offsets makes it read them, and its stale batch is
    fenced; one that only inserted into another table does not."""
    import ledger.offsets_fence as offsets_fence

    reads = []
    read_all = offsets_fence.read_stored_offsets

    def counted(connection: object) -> dict:
        reads.append(1)
        return read_all(connection)

    monkeypatch.setattr(offsets_fence, "read_stored_offsets", counted)
    values = list(SampleTraffic().metered(60))
    with lake.open() as first, lake.open() as second:
        for start in (0, 10, 20):
            first.append(*batch_of(values[start : start + 10], first_offset=start))
        second.adopt_file_position(FileSourcePosition("file:x", 3, 30, "0" * 64, "x.jsonl"))  # another table only
        first.append(*batch_of(values[30:40], first_offset=30))
        assert len(reads) == 1
        second.append(*batch_of(values[40:50], first_offset=40))  # takes the partition over
        with pytest.raises(LedgerOffsetsFencedError, match="starts at 40"):
            first.append(*batch_of(values[40:45], first_offset=40))
        first.append(*batch_of(values[50:], first_offset=50))
        assert len(reads) == 3  # the first writer's one, the second's, the first's after the second's offsets
    assert _count(lake, "t") == (60, 60)
    with lake.open_read_only() as reader:
        assert reader.stored_offsets() == {("t", 0): 60}
        assert verify(reader).problems == []


def test_a_resent_event_with_a_quote_or_a_non_ascii_id_is_still_a_duplicate(lake: Lake) -> None:
    """The duplicate check writes the batch's id range into its SQL (so DuckLake skips files by statistics): an id
    with a quote is escaped, one outside printable ASCII leaves the range out; both resends are found."""
    values = list(SampleTraffic().metered(30))
    odd = []
    for value, event_id in zip(values[:2], ["it's-1", "\u00e9v\u00e9nement-2"], strict=True):
        event = json.loads(value)
        event["id"] = json.loads(f'"{event_id}"')
        odd.append(json.dumps(event, separators=(",", ":")).encode())
    with lake.open() as ledger:
        ledger.append(*batch_of([*odd, *values[2:10]], first_offset=0))
        ledger.append(*batch_of(values[10:20], first_offset=10))
        for first_offset, resent in enumerate([[odd[0], *values[20:25]], [odd[1], *values[25:]]]):
            result = ledger.append(*batch_of(resent, first_offset=20 + first_offset * 6))
            assert (result.events, result.duplicates) == (len(resent) - 1, 1), result
        changed = conflicting_duplicate(odd[0])
        result = ledger.append(*batch_of([changed], first_offset=32))
        assert (result.events, result.duplicates, result.dead_letters) == (0, 0, 1)
    assert _count(lake, "t") == (30, 30)


def test_verify_passes_then_names_an_edited_file_and_a_delete(lake: Lake) -> None:
    """`royalty verify` (and `verify()`) accept an append-only ledger, then fail on a changed byte and on a DELETE."""
    with lake.open() as ledger:
        ledger.append(*batch_of([*SampleTraffic().metered(300), b"bad"]))
    with lake.open_read_only() as reader:
        report = verify(reader)
    # The events' file, their rollups' (ledger format 13), their payer rollups' (format 16) and the dead letter's.
    assert report.ok and report.files == 4, report.problems
    assert subprocess.run(royalty_command("verify", *lake.cli_options()), capture_output=True).returncode == 0

    target = lake.parquet_files()[0]
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with lake.open_read_only() as reader:
        problems = verify(reader).problems
    assert len(problems) == 1 and target.name in problems[0] and "contents changed" in problems[0]

    with lake.open() as ledger:
        ledger.connection.execute("DELETE FROM lake.main.inference_metered WHERE input_tokens < 1000")
    result = subprocess.run(royalty_command("verify", *lake.cli_options()), capture_output=True, text=True)
    assert result.returncode == 1 and "delete" in result.stderr.lower()


def test_processes_opening_a_new_postgres_catalog_at_once_all_succeed_and_append_verifiably(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """Three processes open one fresh PostgreSQL catalog at once and append (twice over); none fails, verify passes."""
    opener = (
        "import sys; from ingest.sample import SampleTraffic; from ledger import Ledger; "
        "from tests.ledger.helpers import batch_of\n"
        "with Ledger.open(sys.argv[1], sys.argv[2]) as ledger:\n"
        "    ledger.append(*batch_of(list(SampleTraffic(seed=int(sys.argv[3])).metered(50)), topic=sys.argv[3]))"
    )
    for round_number in range(2):
        catalog = postgres_server.create_database(f"race_{uuid.uuid4().hex[:12]}")
        data_path = str(tmp_path / f"data-{round_number}")
        openers = [
            subprocess.Popen([sys.executable, "-c", opener, catalog, data_path, str(seed)], stderr=subprocess.PIPE,
                             text=True, env=_environment, cwd=repo_root)
            for seed in range(3)
        ]  # fmt: skip
        for process in openers:
            _, errors = process.communicate(timeout=60)
            assert process.returncode == 0, errors[-2000:]
        with Ledger.open_read_only(catalog, data_path) as reader:
            offsets = reader.stored_offsets()
            # A writer that attached before the creator set the inlining options would have
            # written its bookkeeping rows as Parquet files with no recorded checksum.
            report = verify(reader)
        assert offsets == {(str(seed), 0): 50 for seed in range(3)}
        # Each process's append: its events' file, their rollups' (ledger format 13) and payer rollups' (format 16).
        assert report.ok and report.files == 9 and not report.orphans, (report.problems, report.orphans)


def test_two_appending_processes_on_one_postgres_catalog_land_every_append_once(postgres_lake: Lake) -> None:
    """Two writer processes append small batches at once to one PostgreSQL catalog; nothing lost or doubled."""
    postgres_lake.open().close()
    with postgres_lake.open_read_only() as reader:
        (snapshots_created,) = reader.connection.execute("SELECT count(*) FROM lake.snapshots()").fetchone()
    size, batches = 200, 25
    location, data_path = postgres_lake.location, str(postgres_lake.data_path)
    writers = [
        subprocess.Popen(
            [*_appender, location, topic, str(batches), str(size), str(seed), data_path],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_environment, cwd=repo_root,
        )
        for seed, topic in enumerate(["writer-a", "writer-b"], start=1)
    ]
    for writer in writers:
        output, errors = writer.communicate(timeout=120)
        assert writer.returncode == 0, errors
        assert output.count("committed") == batches
    assert _count(postgres_lake, "writer-a") == _count(postgres_lake, "writer-b") == (size * batches, size * batches)
    with postgres_lake.open_read_only() as reader:
        assert reader.stored_offsets() == {("writer-a", 0): size * batches, ("writer-b", 0): size * batches}
        (batch_rows, writers_seen) = reader.connection.execute(
            "SELECT count(*), count(DISTINCT writer) FROM lake.main.ingest_batch"
        ).fetchone()
        (snapshots,) = reader.connection.execute("SELECT count(*) FROM lake.snapshots()").fetchone()
        report = verify(reader)
    assert (batch_rows, writers_seen) == (2 * batches, 2)
    # The new ledger's snapshots (its format, its tables), then one per append: no append was split or lost.
    assert snapshots == snapshots_created + 2 * batches
    assert report.ok, report.problems



def test_a_second_writer_waits_for_the_partition_and_is_fenced_not_stored_twice(postgres_lake: Lake) -> None:
    """Two writers (two consumers that both believe they own partition 2) append the same range at once.

    The first holds the partition's lock from before its transaction until after its commit; the second
    waits for it, then sees the first one's offsets and is refused: the range is stored once.
    """
    import threading
    import time

    values = list(SampleTraffic().metered(50))
    outcomes: dict[str, object] = {}
    first_checked, release_first = threading.Event(), threading.Event()
    with postgres_lake.open() as first, postgres_lake.open() as second:
        check = first._check_offsets_fence

        def check_then_hold(offsets) -> None:
            check(offsets)
            first_checked.set()
            release_first.wait(30)

        first._check_offsets_fence = check_then_hold  # type: ignore[method-assign]

        def append(ledger: Ledger, name: str) -> None:
            try:
                outcomes[name] = ledger.append(*batch_of(values, topic="zombie", partition=2, first_offset=100))
            except Exception as error:  # the test reads the outcome on its own thread
                outcomes[name] = error

        first_thread = threading.Thread(target=append, args=(first, "first"))
        first_thread.start()
        assert first_checked.wait(30)
        second_thread = threading.Thread(target=append, args=(second, "second"))
        second_thread.start()
        time.sleep(1.0)
        assert second_thread.is_alive() and "second" not in outcomes, "the second writer did not wait"
        release_first.set()
        first_thread.join(timeout=60)
        second_thread.join(timeout=60)
    assert not isinstance(outcomes["first"], Exception), outcomes
    assert isinstance(outcomes["second"], LedgerOffsetsFencedError), outcomes
    with postgres_lake.open_read_only() as reader:
        report = verify(reader)
        (stored,) = reader.connection.execute(
            "SELECT count(*) FROM lake.main.inference_metered WHERE kafka_topic = 'zombie'"
        ).fetchone()
    assert report.ok and not report.warnings, (report.problems, report.warnings)
    assert stored == 50


def test_verify_names_an_offset_range_stored_twice(postgres_lake: Lake) -> None:
    """Were a range ever stored twice (a writer without the partition locks), `verify` names it."""
    values = list(SampleTraffic().metered(20))
    with postgres_lake.open() as ledger:
        ledger.append(*batch_of(values, topic="zombie", partition=2, first_offset=100))
        ledger._check_offsets_fence = lambda offsets: None  # type: ignore[method-assign]
        ledger.append(*batch_of(values, topic="zombie", partition=2, first_offset=100), writer="host:42")
    with postgres_lake.open_read_only() as reader:
        report = verify(reader)
    assert report.ok, report.problems
    assert len(report.warnings) == 1, report.warnings
    assert "offsets 100..119 of zombie/2 were appended again" in report.warnings[0] and "host:42" in report.warnings[0]
    listed = subprocess.run(royalty_command("verify", *postgres_lake.cli_options()), capture_output=True, text=True)
    assert listed.returncode == 0 and "appended again" in listed.stderr


def test_an_append_whose_commit_meets_another_writers_commit_is_redone_and_every_file_stays_readable(
    postgres_lake: Lake,
) -> None:
    """A writer commits while another's first append (new tables, so new DuckLake column maps) is open.

    DuckLake (0.3, DuckDB 1.4.4) retries such a commit itself and re-numbers the new column maps but not
    the files naming them: a file then names a map the catalog does not hold and no reader can read the
    table ("Unknown name map id"). The ledger turns DuckLake's own retry off and redoes its whole
    transaction instead; every row is stored once and readable. (On a SQLite catalog an open
    transaction holds the catalog's lock, so another writer cannot commit inside it.)
    """
    from ingest.producer import sample_messages

    lake = postgres_lake
    mixed = [message for _kind, message in sample_messages(300, 0, 0, 50_000, 4, 20, seed=3)]
    valid = [message for _kind, message in sample_messages(120, 0, 0, 0, 4, 20, seed=4)]
    invalid = [b'{"not": "an event"}'] * 3
    with lake.open() as first, lake.open() as second:
        check = first._check_offsets_fence
        others: list[object] = []

        def check_then_let_the_other_commit(offsets) -> None:
            check(offsets)
            if not others:  # once: the redone transaction commits alone
                others.append(second.append(*batch_of(valid, topic="other")))
                others.append(second.append(*batch_of(invalid, topic="other", first_offset=len(valid))))

        first._check_offsets_fence = check_then_let_the_other_commit  # type: ignore[method-assign]
        first.append(*batch_of(mixed, topic="first"))
    assert others, "the other writer did not commit inside the first one's transaction"
    with lake.open_read_only() as reader:
        rows = {
            table: len(reader.connection.execute(f"SELECT * FROM lake.main.{table}").fetchall())
            for table in ("inference_metered", "contributor_registered", "model_registered", "split_policy_set",
                          "dead_letter")
        }  # fmt: skip
        offsets = reader.stored_offsets()
        report = verify(reader)
    assert offsets == {("first", 0): len(mixed), ("other", 0): len(valid) + len(invalid)}
    assert sum(rows.values()) == len(mixed) + len(valid) + len(invalid), rows
    assert report.ok, report.problems


def test_an_append_reusing_its_column_maps_lets_ducklake_retry_its_commit_and_stays_readable(
    postgres_lake: Lake,
) -> None:
    """Once a writer's files of a table were committed, its later files reuse that column map: no new map for
    DuckLake's own commit retry to re-number, so such an append's commit meeting another writer's is retried
    by DuckLake (cheap) rather than redone whole by the ledger; every row stays readable."""
    from ingest.sample import SampleTraffic

    first_batch, second_batch = list(SampleTraffic(seed=5).metered(200)), list(SampleTraffic(seed=6).metered(200))
    other = list(SampleTraffic(seed=7).metered(100))
    with postgres_lake.open() as first, postgres_lake.open() as second:
        first.append(*batch_of(first_batch, topic="first"))  # its column maps committed
        second.append(*batch_of(other[:50], topic="other"))
        check = first._check_offsets_fence
        others: list[object] = []

        def check_then_let_the_other_commit(offsets) -> None:
            check(offsets)
            if not others:
                others.append(second.append(*batch_of(other[50:], topic="other", first_offset=50)))

        first._check_offsets_fence = check_then_let_the_other_commit  # type: ignore[method-assign]
        retries_before = first.commit_retries
        first.append(*batch_of(second_batch, topic="first", first_offset=len(first_batch)))
        assert others and first.commit_retries == retries_before, "the append was redone, not retried by DuckLake"
    with postgres_lake.open_read_only() as reader:
        stored = len(reader.connection.execute("SELECT * FROM lake.main.inference_metered").fetchall())
        report = verify(reader)
    assert stored == len(first_batch) + len(second_batch) + len(other)
    assert report.ok, report.problems
