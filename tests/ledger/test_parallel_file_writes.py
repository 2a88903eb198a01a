"""A large `append_records` writes its tables' Parquet files on threads (`constants.parallel_file_rows_min`): the same
rows and checksums as one file after another, and on a failed write no file of the append is left behind."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ledger import Ledger, constants
from ledger import ledger as ledger_module
from ledger.errors import LedgerStorageError
from ledger.ledger import Ledger as LedgerClass
from ledger.object_store import DataStore
from ledger.tables import file_tables
from ledger.verify import verify

_tables = ("settlement_holder_dust", "settlement_tree_node", "settlement_payable")


def _records(sizes: tuple[int, int], seed: int) -> dict[str, pa.Table]:
    dust_rows, node_rows = sizes
    dust = pa.table(
        {
            "epoch": [1] * dust_rows,
            "token": ["0x" + "ab" * 20] * dust_rows,
            "holder": [f"0x{seed:08x}{i:032x}" for i in range(dust_rows)],
            "carried_micros": [seed * 7 + i for i in range(dust_rows)],
        },
        schema=file_tables["settlement_holder_dust"],
    )
    nodes = pa.table(
        {"epoch": [1] * node_rows, "chunk": list(range(node_rows)), "nodes": [bytes([i % 256, seed % 256]) * 16
                                                                             for i in range(node_rows)]},
        schema=file_tables["settlement_tree_node"],
    )  # fmt: skip
    # an empty table in the same append: no file is written for it
    empty = file_tables["settlement_payable"].empty_table()
    return {"settlement_holder_dust": dust, "settlement_tree_node": nodes, "settlement_payable": empty}


def _stored(ledger: Ledger) -> dict[str, list[tuple]]:
    return {
        table: sorted(ledger.connection.execute(f"SELECT * FROM lake.main.{table}").fetchall()) for table in _tables
    }


@pytest.mark.parametrize("streamed", [False, True], ids=["buffered", "streamed"])
def test_threaded_file_writes_store_the_rows_given_with_their_checksums(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, streamed: bool
) -> None:
    """Two appends written on threads (the second beside the first's files) store exactly the rows given, and
    `verify` finds every file's checksum: each thread's SHA-256 and catalog row are its own file's. Also with every
    file encoded straight into its file and hashed from it (`constants.streamed_file_bytes_min`)."""
    monkeypatch.setattr(constants, "parallel_file_rows_min", 1)
    if streamed:
        monkeypatch.setattr(constants, "streamed_file_bytes_min", 0)
    given = [_records((300, 40), 1), _records((7, 3), 2)]
    with Ledger.open(tmp_path / "lake") as ledger:
        for records in given:
            ledger.append_records(records)
    with Ledger.open_read_only(tmp_path / "lake") as ledger:
        assert verify(ledger).problems == []
        stored = _stored(ledger)
    expected = {table: sorted(row for records in given for row in _as_tuples(records[table])) for table in _tables}
    assert stored == expected


def _as_tuples(rows: pa.Table) -> list[tuple]:
    return [tuple(row.values()) for row in rows.to_pylist()]


def test_a_failed_threaded_write_leaves_no_file_and_no_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One table's file fails to write while the others are written on other threads: the append raises that error,
    commits nothing, and removes the files the other threads wrote."""
    monkeypatch.setattr(constants, "parallel_file_rows_min", 1)
    write_file = LedgerClass._write_file

    def failing(self, table_name, rows, batch_id, event_date):
        if table_name == "settlement_tree_node":
            raise LedgerStorageError("/disk/full", 28, "No space left on device")
        return write_file(self, table_name, rows, batch_id, event_date)

    with Ledger.open(tmp_path / "lake") as ledger:
        ledger.append_records(_records((3, 2), 1))  # a first append, kept
        before = sorted(path.name for path in (tmp_path / "lake").rglob("*.parquet"))
        monkeypatch.setattr(LedgerClass, "_write_file", failing)
        with pytest.raises(LedgerStorageError, match="No space left"):
            ledger.append_records(_records((50, 5), 2))
        monkeypatch.setattr(LedgerClass, "_write_file", write_file)
        assert {table: len(rows) for table, rows in _stored(ledger).items()} == {
            "settlement_holder_dust": 3, "settlement_tree_node": 2, "settlement_payable": 0,
        }  # fmt: skip
    assert sorted(path.name for path in (tmp_path / "lake").rglob("*.parquet")) == before


def test_a_tables_incompressible_column_is_stored_uncompressed_and_reads_back(tmp_path: Path) -> None:
    """The tree's nodes (Keccak hashes, `register_table(incompressible=...)`) are written without compression, every
    other column with zstd; the rows read back exactly and `verify` is clean."""
    records = _records((5, 30), 3)
    with Ledger.open(tmp_path / "lake") as ledger:
        ledger.append_records(records)
        stored = _stored(ledger)
    with Ledger.open_read_only(tmp_path / "lake") as ledger:
        assert verify(ledger).problems == []
    assert stored["settlement_tree_node"] == sorted(_as_tuples(records["settlement_tree_node"]))
    (node_file,) = (tmp_path / "lake").rglob("settlement_tree_node/*.parquet")
    metadata = pq.ParquetFile(node_file).metadata.row_group(0)
    codecs = {metadata.column(i).path_in_schema: metadata.column(i).compression for i in range(metadata.num_columns)}
    assert codecs == {"epoch": "ZSTD", "chunk": "ZSTD", "nodes": "UNCOMPRESSED"}
    (dust_file,) = (tmp_path / "lake").rglob("settlement_holder_dust/*.parquet")
    dust = pq.ParquetFile(dust_file).metadata.row_group(0)
    assert {dust.column(i).compression for i in range(dust.num_columns)} == {"ZSTD"}


def test_a_streamed_write_stopped_mid_file_leaves_no_file_and_no_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file encoded straight into its temporary file (`constants.streamed_file_bytes_min`) that stops half-written
    (the disk full after some bytes, or the encoding failing) raises, commits nothing and leaves no temporary file."""
    monkeypatch.setattr(constants, "streamed_file_bytes_min", 0)
    write_table = ledger_module.pq.write_table

    def disk_full_midway(rows: pa.Table, sink: pa.NativeFile, **options: object) -> None:
        sink.write(b"PAR1" + bytes(2 * 1024 * 1024))  # past the write buffer: on the disk already
        raise OSError(28, "No space left on device")

    def bad_encoding(rows: pa.Table, sink: pa.NativeFile, **options: object) -> None:
        sink.write(b"PAR1")
        raise pa.ArrowInvalid("cannot encode")

    with Ledger.open(tmp_path / "lake") as ledger:
        ledger.append_records(_records((3, 2), 1))  # a first append, streamed and kept
        before = sorted(path.name for path in (tmp_path / "lake").rglob("*") if path.is_file())
        for failing, error, message in ((disk_full_midway, LedgerStorageError, "No space left"),
                                        (bad_encoding, pa.ArrowInvalid, "cannot encode")):  # fmt: skip
            monkeypatch.setattr(ledger_module.pq, "write_table", failing)
            with pytest.raises(error, match=message):
                ledger.append_records(_records((50, 5), 2))
            monkeypatch.setattr(ledger_module.pq, "write_table", write_table)
            assert {table: len(rows) for table, rows in _stored(ledger).items()} == {
                "settlement_holder_dust": 3, "settlement_tree_node": 2, "settlement_payable": 0,
            }  # fmt: skip
            assert sorted(path.name for path in (tmp_path / "lake").rglob("*") if path.is_file()) == before
    with Ledger.open_read_only(tmp_path / "lake") as ledger:
        assert verify(ledger).problems == []


def test_files_a_failed_append_could_not_remove_are_removed_at_the_next_append(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The data path turns read-only in the middle of an append: a file is written, the next one fails, and the
    first cannot be removed then (EROFS). It is removed at the next append once the path is writable: no orphan."""
    monkeypatch.setattr(constants, "parallel_file_rows_min", 10**9)  # one file after another: a known order
    write_file = LedgerClass._write_file
    remove = DataStore.remove

    def failing(self, table_name, rows, batch_id, event_date):
        if table_name == "settlement_tree_node":
            raise LedgerStorageError("/data", 30, "Read-only file system")
        return write_file(self, table_name, rows, batch_id, event_date)

    def read_only(self: DataStore, path: str) -> None:
        raise OSError(30, "Read-only file system", path)

    with Ledger.open(tmp_path / "lake") as ledger:
        ledger.append_records(_records((3, 2), 1))
        before = sorted(path.name for path in (tmp_path / "lake").rglob("*.parquet"))
        monkeypatch.setattr(LedgerClass, "_write_file", failing)
        monkeypatch.setattr(DataStore, "remove", read_only)
        with pytest.raises(LedgerStorageError, match="Read-only"):
            ledger.append_records(_records((50, 5), 2))
        left = sorted(path.name for path in (tmp_path / "lake").rglob("*.parquet"))
        assert len(left) == len(before) + 1 and len(ledger.store.leftovers) == 1  # the dust file, not listed
        monkeypatch.setattr(LedgerClass, "_write_file", write_file)
        monkeypatch.setattr(DataStore, "remove", remove)
        ledger.append_records(_records((4, 1), 3))
        assert ledger.store.leftovers == []
        listed = {Path(path).name for table in _tables for (path,) in ledger.connection.execute(
            "SELECT data_file FROM ducklake_list_files('lake', ?)", [table]).fetchall()}  # fmt: skip
    assert set(path.name for path in (tmp_path / "lake").rglob("*.parquet")) == listed
    with Ledger.open_read_only(tmp_path / "lake") as ledger:
        assert verify(ledger).problems == []
