"""`royalty ingest --expire-when-idle-s` against a real Kafka broker (issue 19): a quiet source lets ingest compact the
ledger and then expire the old snapshots, keeping the epoch's closing snapshot, and `verify` stays clean."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from kafka import KafkaProducer

from ledger import Ledger
from ledger.verify import verify
from settlement import close_epoch
from tests.conftest import repo_root
from tests.support.ledger_batches import sample_messages

if TYPE_CHECKING:
    from tests.support.kafka_broker import KafkaBroker

pytest_plugins = ("tests.support.kafka_broker",)

TOPIC = "idle-expiry"
_payables = "SELECT epoch, recipient, amount_micros, cumulative_micros FROM lake.main.settlement_payable ORDER BY ALL"


def _produce(broker: KafkaBroker, values: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    for value in values:
        producer.send(TOPIC, value=value)
    producer.flush()
    producer.close()


def _ingest(broker: KafkaBroker, lake: Path, *extra: str, env: dict[str, str] | None = None) -> str:
    # 20 messages a batch: a trickle of small appends, each its own snapshot and files.
    command = [
        sys.executable,
        "-m",
        "royalty.cli",
        "ingest",
        "--bootstrap-servers",
        broker.bootstrap_servers,
        "--topic",
        TOPIC,
        "--lake",
        str(lake),
        "--batch-records-max",
        "20",
        "--log-format",
        "text",
        *extra,
    ]
    environment = {**os.environ, "PYTHONPATH": str(repo_root), **(env or {})}
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


def _snapshots(ledger: Ledger) -> list[int]:
    return [s for (s,) in ledger.connection.execute("SELECT snapshot_id FROM ducklake_snapshots('lake')").fetchall()]


def _epoch_rows(ledger: Ledger, closing: int) -> list:
    return ledger.connection.execute(
        f"SELECT * FROM lake.main.inference_metered AT (VERSION => {closing}) ORDER BY ALL"
    ).fetchall()


def test_an_idle_ingest_compacts_then_expires_old_snapshots_keeping_the_closing_one(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    values = sample_messages(240)
    kafka_broker.create_topic(TOPIC, 1)
    lake = tmp_path / "lake"
    _produce(kafka_broker, values[:120])
    _ingest(kafka_broker, lake, "--until-idle-s", "2")
    with Ledger.open(lake) as ledger:
        close_epoch(ledger)
        ((closing,),) = ledger.connection.execute("SELECT closing_snapshot FROM lake.main.settlement_epoch").fetchall()
        before = {"epoch": _epoch_rows(ledger, closing), "payables": ledger.connection.execute(_payables).fetchall()}
        snapshots_before = len(_snapshots(ledger))
    _produce(kafka_broker, values[120:])
    # Every snapshot is old enough (`expire_older_than_s` 0, from the environment as an operator would set it).
    # Both are submitted to the append worker after 1 s of quiet; the stop at 2 s waits for them.
    idle = ("--until-idle-s", "2", "--compact-when-idle-s", "1", "--expire-when-idle-s", "1")
    log = _ingest(kafka_broker, lake, *idle, env={"ROYALTY_EXPIRE_OLDER_THAN_S": "0"})
    assert "compacted when idle" in log and "snapshots expired when idle" in log, log[-3000:]
    with Ledger.open(lake) as ledger:
        ((records, expired, dropped),) = ledger.connection.execute(
            "SELECT count(*), sum(snapshot_count), sum(files_dropped) FROM lake.main.ledger_snapshot_expiry"
        ).fetchall()
        snapshots = _snapshots(ledger)
        # One expiry in the one quiet spell; it ran after the compaction (it dropped the files that one retired).
        assert records == 1 and expired > 0 and dropped > 0
        assert len(snapshots) < snapshots_before + 6  # the second run appended 6 batches, compacted and expired
        assert closing in snapshots
        after = {"epoch": _epoch_rows(ledger, closing), "payables": ledger.connection.execute(_payables).fetchall()}
        assert after == before  # time travel to the closing snapshot and the stored payables
        ((events, distinct),) = ledger.connection.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM lake.main.inference_metered"
        ).fetchall()
        assert events == distinct == 240
        assert ledger.stored_offsets() == {(TOPIC, 0): len(values)}
        report = verify(ledger, retired_files=True)
    assert report.ok, report.problems
    assert report.snapshots_expired == expired
