"""The ledger's data folder fails under a running `royalty ingest`: made read-only, or full (a real ENOSPC).

Both tests mount a small tmpfs on the ledger's data folder, so the faults are the kernel's own
(EROFS, ENOSPC), not simulated. They need root and permission to mount (a container without
CAP_SYS_ADMIN has neither); elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from ledger import Ledger
from tests.conftest import royalty_command
from tests.faults.ingest_harness import (
    CATCH_UP_S_MAX,
    IngestProcess,
    Produced,
    assert_exactly_once,
    environment,
    expected_ledger,
    ledger_contents,
    stored_offsets,
    wait_for,
)

if TYPE_CHECKING:
    from tests.support.kafka_broker import KafkaBroker

pytest_plugins = ("tests.support.kafka_broker",)

STORAGE_FAILING = "ledger storage failing; retrying the same batch"
LEDGER_BACK = "ledger available again; resuming"
BATCH_OPTIONS = ("--batch-records-max", "2000", "--batch-latency-ms-max", "300")
# Room for the first few appends (a 2,000-event batch is ~100 KB of Parquet), not for the traffic.
FULL_DISK_KB = 384
ROOMY_DISK_KB = 256 * 1024
MOUNT_TIMEOUT_S = 30
# A remount to read-only fails with EBUSY while a file is open for writing; the next try succeeds.
REMOUNT_ATTEMPTS_MAX = 20
REMOUNT_RETRY_S = 0.1
FAILURE_REPORTED_S_MAX = 60
# The service keeps retrying through this much of the fault before the test removes it.
FAULT_HELD_S = 3


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=MOUNT_TIMEOUT_S, check=False)


@contextmanager
def tmpfs(folder: Path, size_kb: int) -> Iterator[Path]:
    """A tmpfs of `size_kb` on `folder` for the block, unmounted after; skips the test if mounting is refused."""
    if os.geteuid() != 0:
        pytest.skip(f"mounting a tmpfs needs root (tests run as uid {os.geteuid()})")
    folder.mkdir(parents=True, exist_ok=True)
    done = _mount("-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(folder))
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (no CAP_SYS_ADMIN?): {done.stderr.strip()}")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True, timeout=MOUNT_TIMEOUT_S).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=MOUNT_TIMEOUT_S, check=True)


def remount(folder: Path, options: str) -> None:
    """Change a mounted tmpfs's options (`ro`, `rw`, `size=...k`), retrying while it is busy."""
    for _ in range(REMOUNT_ATTEMPTS_MAX):
        done = _mount("-o", f"remount,{options}", str(folder))
        if done.returncode == 0:
            return
        time.sleep(REMOUNT_RETRY_S)
    raise AssertionError(f"mount -o remount,{options} {folder} failed: {done.stderr.strip()}")


def _verify_cli(lake: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(royalty_command("verify", "--lake", str(lake)), capture_output=True, text=True,
                          env=environment, timeout=CATCH_UP_S_MAX, check=False)  # fmt: skip


def _unlisted_files(lake: Path) -> list[str]:
    """Files in the data folder that no committed append lists (half-written or abandoned ones)."""
    with Ledger.open_read_only(lake) as reader:
        listed = {row[0] for row in reader.connection.execute("SELECT path FROM lake.main.file_checksum").fetchall()}
    data = lake / "data"
    on_disk = {str(path.relative_to(data)) for path in data.rglob("*") if path.is_file()}
    return sorted(on_disk - listed)


def _storage_errors(ingest: IngestProcess) -> list[str]:
    return [entry.get("error", "") for entry in ingest.logged(STORAGE_FAILING)]


def test_data_folder_made_read_only_mid_stream_is_retried_and_ingest_resumes_when_writable(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """The data folder turns read-only (EROFS) while traffic arrives; the service logs `ledger storage
    failing` naming the path and EROFS, keeps the batch and retries with backoff, resumes by itself once the
    folder is writable again, exits 0 on SIGTERM; the ledger is exact and `royalty verify` passes."""
    produced = Produced(f"read-only-{uuid.uuid4().hex[:8]}")
    kafka_broker.create_topic(produced.topic, 3)
    lake = tmp_path / "lake"
    with tmpfs(lake / "data", ROOMY_DISK_KB) as data:
        produced.produce(kafka_broker, 6_000, seed=41)
        ingest = IngestProcess(kafka_broker, produced.topic, lake, tmp_path / "ingest.log", *BATCH_OPTIONS)
        try:
            wait_for(lambda: bool(stored_offsets(lake)), CATCH_UP_S_MAX, "ingest committed nothing before the fault")
            remount(data, "ro")
            try:
                produced.produce(kafka_broker, 6_000, seed=42)
                wait_for(lambda: bool(_storage_errors(ingest)) or not ingest.alive(), FAILURE_REPORTED_S_MAX,
                         "the read-only data folder was not reported")  # fmt: skip
                time.sleep(FAULT_HELD_S)
                assert ingest.alive(), ingest.output()[-3000:]
            finally:
                remount(data, "rw")
            error = _storage_errors(ingest)[0]
            assert "EROFS" in error and str(data) in error, error
            expected = expected_ledger(kafka_broker, produced)
            wait_for(lambda: stored_offsets(lake) == expected.offsets, CATCH_UP_S_MAX, "ingest did not resume")
            assert ingest.logged(LEDGER_BACK), ingest.output()[-3000:]
            assert ingest.terminate() == 0, ingest.output()[-3000:]
        finally:
            ingest.kill()
        assert_exactly_once(ledger_contents(lake), expected)
        assert _unlisted_files(lake) == []
        verified = _verify_cli(lake)
        assert verified.returncode == 0, verified.stdout + verified.stderr


def test_disk_full_during_append_stops_cleanly_on_sigterm_and_a_restart_after_freeing_space_is_exact(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """The data folder's disk fills up (ENOSPC) part-way through the traffic. The service logs `ledger storage
    failing` naming the path and ENOSPC and retries; no half-written or unlisted file is left on the full disk.
    SIGTERM then stops it non-zero with a message naming the path, ENOSPC and that the batch was not committed.
    After the disk grows, a restart finishes: the ledger is exact and `royalty verify` passes."""
    produced = Produced(f"disk-full-{uuid.uuid4().hex[:8]}")
    kafka_broker.create_topic(produced.topic, 3)
    lake = tmp_path / "lake"
    with tmpfs(lake / "data", FULL_DISK_KB) as data:
        produced.produce(kafka_broker, 20_000, seed=43)
        ingest = IngestProcess(kafka_broker, produced.topic, lake, tmp_path / "ingest.log", *BATCH_OPTIONS)
        try:
            wait_for(lambda: bool(_storage_errors(ingest)) or not ingest.alive(), CATCH_UP_S_MAX,
                     "the full disk was not reported")  # fmt: skip
            time.sleep(FAULT_HELD_S)
            assert ingest.alive(), ingest.output()[-3000:]
            error = _storage_errors(ingest)[0]
            assert "ENOSPC" in error and str(data) in error, error
            assert stored_offsets(lake), "the disk was full before the first append; make FULL_DISK_KB larger"
            assert _unlisted_files(lake) == [], "a failed append left files behind on the full disk"
            exit_code = ingest.terminate()
        finally:
            ingest.kill()
        message = "".join(ingest.output().split())  # the console wraps long lines
        assert exit_code != 0, ingest.output()[-3000:]
        for needed in ("ENOSPC", "".join(str(data).split()), "wasnotcommitted"):
            assert needed in message, ingest.output()[-3000:]
        assert "Traceback" not in ingest.output(), ingest.output()[-3000:]

        remount(data, f"size={ROOMY_DISK_KB}k")
        restart = IngestProcess(kafka_broker, produced.topic, lake, tmp_path / "restart.log", *BATCH_OPTIONS,
                                "--until-idle-s", "3")  # fmt: skip
        assert restart.process.wait(timeout=CATCH_UP_S_MAX) == 0, restart.output()[-3000:]
        assert_exactly_once(ledger_contents(lake), expected_ledger(kafka_broker, produced))
        assert _unlisted_files(lake) == []
        verified = _verify_cli(lake)
        assert verified.returncode == 0, verified.stdout + verified.stderr
