"""The ledger with its data files on S3 (`--data-path s3://bucket/prefix`), on a real SeaweedFS server.

Every command runs on it: `ingest` writes each Parquet file to the bucket (nothing local), `verify` reads
each one back against its recorded SHA-256 and lists and removes orphans there, `close-epoch`, `settle` (the
in-process chain), `sql`, `export` and `backup` read them from there. The catalog is SQLite (the command
chain) or PostgreSQL (several writers' layout). Faults: the server stopped in the middle of an ingest
(retried, nothing lost or doubled, `verify` clean), wrong credentials (a clear error at start, the secret
never echoed), an object removed behind the ledger's back (named by `verify`).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from typer.testing import CliRunner

from ingest.service import IngestService
from ingest.sources import FileSource
from ledger import Ledger, constants, object_store
from ledger.connection import ledger_id
from ledger.verify import verify
from royalty.cli import app
from tests.conftest import royalty_command
from tests.ledger.test_parallel_file_writes import _records

if TYPE_CHECKING:
    # Imported for annotations only: importing the modules before pytest_plugins registers them
    # would keep pytest from rewriting their asserts.
    from tests.support.postgres import PostgresServer
    from tests.support.seaweedfs import SeaweedServer

pytest_plugins = ("tests.support.seaweedfs", "tests.support.postgres")
runner = CliRunner()
sample_events = 300


@pytest.fixture(autouse=True)
def _fresh_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from the AWS variables (a CLI run in this process configures the ledger's S3 access)."""
    monkeypatch.setattr(object_store, "_configured", None)


@pytest.fixture(scope="module")
def s3_environment(seaweedfs: SeaweedServer) -> Iterator[dict[str, str]]:
    """The standard AWS variables pointing at the test server, set for the module."""
    environment = seaweedfs.environment()
    with pytest.MonkeyPatch.context() as patch:
        for name, value in environment.items():
            patch.setenv(name, value)
        for name in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION"):
            patch.delenv(name, raising=False)
        yield environment


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sample") / "sample.jsonl"
    subprocess.run(
        royalty_command("produce-sample", "--to-file", str(path), "--events", str(sample_events), "--seed", "3"),
        check=True,
        capture_output=True,
    )
    return path


def _invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def _objects(seaweedfs: SeaweedServer, data_path: str) -> dict[str, int]:
    """Every object under `data_path`, by `s3://` path, with its size."""
    from pyarrow import fs

    prefix = data_path.removeprefix("s3://").rstrip("/")
    infos = seaweedfs.filesystem().get_file_info(fs.FileSelector(prefix, recursive=True, allow_not_found=True))
    return {f"s3://{info.path}": info.size for info in infos if info.type == fs.FileType.File}


def _listed(lake: str, data_path: str) -> dict[str, int]:
    """Every data file the catalog lists now, with the size it recorded."""
    with Ledger.open_read_only(lake, data_path) as ledger:
        tables = [
            name
            for (name,) in ledger.connection.execute(
                "SELECT table_name FROM duckdb_tables() WHERE database_name = 'lake'"
            ).fetchall()
        ]
        return {
            path: size
            for table in tables
            for path, size in ledger.connection.execute(
                "SELECT data_file, data_file_size_bytes FROM ducklake_list_files('lake', ?)", [table]
            ).fetchall()
        }


@pytest.fixture(scope="module")
def s3_lake(
    s3_environment: dict[str, str], seaweedfs: SeaweedServer, sample: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, str]:
    """An embedded (SQLite) catalog with its data on S3, the sample ingested with `royalty ingest`."""
    lake = str(tmp_path_factory.mktemp("s3") / "lake")
    data_path = seaweedfs.data_path(f"chain-{uuid.uuid4().hex[:8]}")
    _invoke("ingest", "--from-file", str(sample), "--lake", lake, "--data-path", data_path, "--log-format", "text")
    return lake, data_path


@pytest.fixture(scope="module")
def closed(s3_lake: tuple[str, str]) -> str:
    lake, data_path = s3_lake
    return _invoke("close-epoch", "--lake", lake, "--data-path", data_path)


@pytest.fixture(scope="module")
def settled(closed: str, s3_lake: tuple[str, str]) -> dict:
    lake, data_path = s3_lake
    return json.loads(_invoke("settle", "--lake", lake, "--data-path", data_path, "--json").strip().splitlines()[-1])


def test_ingest_writes_every_data_file_to_the_bucket_and_none_locally(
    s3_lake: tuple[str, str], seaweedfs: SeaweedServer
) -> None:
    lake, data_path = s3_lake
    listed = _listed(lake, data_path)
    assert listed and all(path.startswith(data_path) for path in listed)
    objects = _objects(seaweedfs, data_path)
    assert {path: objects.get(path) for path in listed} == listed, "every listed file is an object of its size"
    assert not list(Path(lake).rglob("*.parquet")), "no data file was written locally"
    with Ledger.open_read_only(lake, data_path) as ledger:
        (events,) = ledger.connection.execute("SELECT count(*) FROM lake.main.inference_metered").fetchone()
    assert events == sample_events


def test_verify_reads_every_object_back_and_removes_orphans_in_the_bucket(
    s3_lake: tuple[str, str], seaweedfs: SeaweedServer
) -> None:
    """A leftover named like this ledger's own (an append killed before its commit) is listed and removed;
    a foreign object under the prefix is listed and left alone."""
    lake, data_path = s3_lake
    with Ledger.open_read_only(lake, data_path) as ledger:
        identity = ledger_id(ledger.connection)
        snapshot = ledger.current_snapshot()
    prefix = data_path.removeprefix("s3://")
    leftover = f"{prefix}main/inference_metered/{identity}-s{snapshot}-{uuid.uuid4().hex}-0123abcd.parquet"
    foreign = f"{prefix}main/inference_metered/someone-elses.parquet"
    filesystem = seaweedfs.filesystem()
    for key in (leftover, foreign):
        with filesystem.open_output_stream(key) as stream:
            stream.write(b"not a committed file")

    report = json.loads(
        _invoke("verify", "--lake", lake, "--data-path", data_path, "--json", "--remove-orphans",
                "--orphan-age-s-min", "0")
    )  # fmt: skip
    assert report["ok"], report["problems"]
    assert report["files"] == len(_listed(lake, data_path)) and report["bytes_checked"] > 0
    assert {o["path"]: o["ours"] for o in report["orphans"]} == {f"s3://{leftover}": True, f"s3://{foreign}": False}
    assert report["orphans_removed"] == [f"s3://{leftover}"]
    objects = _objects(seaweedfs, data_path)
    assert f"s3://{leftover}" not in objects and f"s3://{foreign}" in objects
    filesystem.delete_file(foreign)


def test_close_epoch_reads_its_inputs_from_the_bucket(closed: str, s3_lake: tuple[str, str]) -> None:
    lake, data_path = s3_lake
    assert "epoch 1 closed" in closed
    with Ledger.open_read_only(lake, data_path) as ledger:
        (events,) = ledger.connection.execute(
            "SELECT event_count FROM lake.main.settlement_epoch WHERE epoch = 1"
        ).fetchone()
    assert events == sample_events
    assert all(path.startswith(data_path) for path in _listed(lake, data_path))


def test_settle_on_the_in_process_chain_reads_payables_from_the_bucket(settled: dict) -> None:
    assert settled["outcome"] == "proposed" and settled["epoch"] == 1 and settled["leaf_count"] > 0


def test_sql_reads_the_views_over_the_bucket(s3_lake: tuple[str, str]) -> None:
    lake, data_path = s3_lake
    output = _invoke("sql", "--lake", lake, "--data-path", data_path, "SELECT count(*) AS n FROM inference_events")
    assert str(sample_events) in output
    attach = _invoke("sql", "--lake", lake, "--data-path", data_path, "--print-attach")
    assert "LOAD httpfs;" in attach and "SECRET '***'" in attach
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in attach


def test_export_writes_the_epoch_read_from_the_bucket(
    settled: dict, s3_lake: tuple[str, str], tmp_path: Path
) -> None:
    lake, data_path = s3_lake
    output = _invoke("export", "--lake", lake, "--data-path", data_path, "--epoch", "1", "--to", str(tmp_path / "out"))
    assert "epoch 1" in output and any((tmp_path / "out").iterdir())


def test_backup_copies_the_objects_into_a_local_ledger_that_verifies(
    settled: dict, s3_lake: tuple[str, str], tmp_path: Path
) -> None:
    lake, data_path = s3_lake
    _invoke("backup", "--lake", lake, "--data-path", data_path, "--to", str(tmp_path / "backup"))
    copied = sorted(path.name for path in (tmp_path / "backup" / "data").rglob("*.parquet"))
    assert copied == sorted(path.rsplit("/", 1)[-1] for path in _listed(lake, data_path))
    with Ledger.open_read_only(tmp_path / "backup") as copy:
        assert verify(copy).ok


# Nightly: CI's group test (tests/integration/test_ingest_group.py, `[s3]`) already ingests and verifies on a
# PostgreSQL catalog with the data on S3; this adds close-epoch on that layout.
@pytest.mark.nightly
def test_a_postgres_catalog_with_data_on_s3_ingests_verifies_and_closes(
    s3_environment: dict[str, str], seaweedfs: SeaweedServer, postgres_server: PostgresServer, sample: Path
) -> None:
    catalog = postgres_server.create_database(f"s3_{uuid.uuid4().hex[:8]}")
    data_path = seaweedfs.data_path(f"pg-{uuid.uuid4().hex[:8]}")
    _invoke("ingest", "--from-file", str(sample), "--lake", catalog, "--data-path", data_path, "--log-format", "text")
    report = json.loads(_invoke("verify", "--lake", catalog, "--data-path", data_path, "--json"))
    assert report["ok"] and report["files"] > 0 and report["orphans"] == []
    assert "epoch 1 closed" in _invoke("close-epoch", "--lake", catalog, "--data-path", data_path)
    assert all(path.startswith(data_path) for path in _listed(catalog, data_path))


def test_wrong_credentials_stop_the_command_at_start_without_echoing_the_secret(
    s3_environment: dict[str, str], seaweedfs: SeaweedServer, sample: Path, tmp_path: Path
) -> None:
    wrong = "wrong-secret-" + uuid.uuid4().hex
    environment = {**s3_environment, "AWS_SECRET_ACCESS_KEY": wrong}
    lake, data_path = tmp_path / "lake", seaweedfs.data_path(f"denied-{uuid.uuid4().hex[:8]}")
    done = subprocess.run(
        royalty_command("ingest", "--from-file", str(sample), "--lake", str(lake), "--data-path", data_path,
                        "--log-format", "json"),
        env={**os.environ, **environment}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    output = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 2, output
    assert "object storage refused access" in output and data_path in output and "AWS_SECRET_ACCESS_KEY" in output
    assert wrong not in output and s3_environment["AWS_SECRET_ACCESS_KEY"] not in output
    assert _objects(seaweedfs, data_path) == {}


def test_ingest_retries_through_an_object_store_outage_and_stores_each_event_once(
    s3_environment: dict[str, str], sample: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A server of its own is stopped right after the first batch commits and started again 3 s later: the next
    appends fail (nothing committed), ingest retries the same batch, and the ledger ends with every event once."""
    from tests.support.seaweedfs import SeaweedServer

    server = SeaweedServer(tmp_path / "weed")
    server.start()
    try:
        config = object_store.configure(endpoint_url=server.endpoint_url)
        assert config.endpoint_url == server.endpoint_url
        lake, data_path = str(tmp_path / "lake"), server.data_path("outage")
        restarted = threading.Event()
        services: list[IngestService] = []

        def restart() -> None:
            try:
                server.start()
                restarted.set()
            finally:
                if not restarted.is_set():  # the server did not come back: stop the ingest, the test fails below
                    services[0].request_stop()

        def stop_once(summary: object) -> None:
            if restarted.is_set() or not server.is_running():
                return
            server.stop()
            timer = threading.Timer(3.0, restart)
            timer.daemon = True
            timer.start()

        with Ledger.open(lake, data_path) as ledger:
            service = IngestService(
                ledger, lambda _: FileSource([str(sample)], ledger), "USDC", 100, 50, "outage", on_committed=stop_once
            )
            services.append(service)
            with caplog.at_level(logging.ERROR, logger="royalty.ingest"):
                service.run(until_idle_s=0.0)
            failures = [r.getMessage() for r in caplog.records if "retrying the same batch" in r.getMessage()]
            assert failures and all(m.startswith("ledger storage failing") for m in failures), failures
            assert restarted.is_set(), "the server was stopped during the ingest and started again"
            counts = ledger.connection.execute(
                "SELECT count(*), count(DISTINCT (source, event_id)) FROM lake.main.inference_metered"
            ).fetchone()
            assert counts == (sample_events, sample_events)
            report = verify(ledger)
            # DuckDB's own reads of the bucket (httpfs) meeting the stopped store are the same transient error.
            server.stop()
            ledger._reconnect()  # a fresh connection: nothing of the files cached
            with pytest.raises(object_store.ObjectStoreUnavailableError, match="object storage failed"):
                ledger._retrying(
                    lambda: ledger.connection.execute("SELECT sum(fee_micros) FROM lake.main.inference_metered")
                    .fetchall(),
                    "read the events",
                )
        # An object written just before the store went away may be left as an orphan (its removal failed too):
        # not part of the ledger, and `verify --remove-orphans` deletes it.
        assert report.ok, report.problems
        assert report.warnings == []
    finally:
        server.stop()


def test_compaction_merges_files_in_the_bucket_and_verify_names_a_missing_object(
    s3_environment: dict[str, str], seaweedfs: SeaweedServer, sample: Path, tmp_path: Path
) -> None:
    """Small batches leave several files per event date; `compact` writes each merged file to the bucket
    (DuckDB COPY TO s3), records its checksum read back from there, and `verify` re-checks the proof. Then an
    object removed behind the ledger's back is named by `verify`."""
    from ledger.compaction import compact

    lake, data_path = str(tmp_path / "lake"), seaweedfs.data_path(f"compact-{uuid.uuid4().hex[:8]}")
    with Ledger.open(lake, data_path) as ledger:
        IngestService(ledger, lambda _: FileSource([str(sample)], ledger), "USDC", 150, 50, "compact").run(
            until_idle_s=0.0
        )
        totals = "SELECT count(*), sum(fee_micros) FROM lake.main.inference_metered"
        before = ledger.connection.execute(totals).fetchone()
        report = compact(ledger)
        assert report.merges > 0 and report.files_retired > report.merges
        after = ledger.connection.execute(totals).fetchone()
        assert after == before
        verified = verify(ledger)
    assert verified.ok, verified.problems
    merged = [path for path in _listed(lake, data_path) if "/inference_metered/" in path]
    objects = _objects(seaweedfs, data_path)
    assert merged and all(path in objects for path in merged)

    # An object removed behind the ledger's back is named by `verify` (exit 1).
    victim = sorted(merged)[0]
    seaweedfs.filesystem().delete_file(victim.removeprefix("s3://"))
    result = runner.invoke(app, ["verify", "--lake", lake, "--data-path", data_path])
    assert result.exit_code == 1, result.output
    assert f"data file `{victim}` is missing" in " ".join(result.output.split())


def test_s3_settings_win_over_the_aws_variables_and_the_secret_is_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    from ledger.redact import redact
    from royalty.common import load_settings

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "aws-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-value-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("ROYALTY_S3_SECRET_ACCESS_KEY", "royalty-secret-value-2")
    monkeypatch.setenv("ROYALTY_S3_ENDPOINT_URL", "http://127.0.0.1:2")
    load_settings({"lake": "x", "data_path": "s3://bucket/prefix"})
    config = object_store.current()
    assert (config.access_key_id, config.secret_access_key) == ("aws-key", "royalty-secret-value-2")
    assert config.endpoint_host == "127.0.0.1:2" and not config.use_ssl and config.path_style
    assert "royalty-secret-value-2" not in repr(config)
    said = "error: signature for royalty-secret-value-2 and aws-secret-value-1"
    assert redact(said) == "error: signature for *** and ***"
    statements = object_store.secret_statements("s3://bucket/prefix/")
    assert "ENDPOINT '127.0.0.1:2'" in statements[-1] and "USE_SSL false" in statements[-1]
    assert object_store.secret_statements("/a/local/folder/") == []


def test_an_endpoint_that_does_not_answer_is_a_retryable_exit_75(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Nothing listens on the endpoint: the command stops at start with exit 75 (retry later), naming the store."""
    from tests.support.postgres import free_loopback_port

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "a-secret-nobody-reads")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_loopback_port()}")
    result = runner.invoke(app, ["ingest", "--from-file", "-", "--lake", str(tmp_path / "lake"),
                                 "--data-path", "s3://nowhere/prefix"], input="")  # fmt: skip
    output = " ".join(result.output.split())
    assert result.exit_code == 75, output
    assert "object storage failed for `s3://nowhere/prefix/`" in output and "a-secret-nobody-reads" not in output


def test_a_file_streamed_locally_is_one_put_of_the_whole_object_on_s3(
    s3_environment: dict[str, str], seaweedfs: SeaweedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every file past `constants.streamed_file_bytes_min` (a local data path encodes those straight into the
    file), an S3 data path still writes each as one object of the size and SHA-256 the catalog records."""
    monkeypatch.setattr(constants, "streamed_file_bytes_min", 0)
    lake, data_path = str(tmp_path / "lake"), seaweedfs.data_path(f"streamed-{uuid.uuid4().hex[:8]}")
    records = _records((40, 6), 5)
    with Ledger.open(lake, data_path) as ledger:
        ledger.append_records(records)
    listed = _listed(lake, data_path)
    assert len(listed) == 2 and _objects(seaweedfs, data_path) == listed
    with Ledger.open_read_only(lake, data_path) as ledger:
        assert verify(ledger).problems == []
        (nodes,) = ledger.connection.execute("SELECT count(*) FROM lake.main.settlement_tree_node").fetchone()
    assert nodes == 6
