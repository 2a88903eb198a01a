"""`benchmarks/soak.py` against the session's real Kafka broker: 90 s in CI, 3 minutes nightly (issue 7's size).

Steady traffic at 5,000 messages/s into `royalty ingest`; the script itself
checks the ledger for exactly-once and RSS for growth, and exits non-zero otherwise. The
nightly hour is `python benchmarks/soak.py --duration-s 3600` (docs/operations.md, "Soak test").
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import depth, repo_root

if TYPE_CHECKING:
    from tests.support.kafka_broker import KafkaBroker

pytest_plugins = ("tests.support.kafka_broker",)

duration_s = depth(90, 180)
# Production, then draining (the script's own bound is 300 s), the ledger check, and a margin.
timeout_s = duration_s + 300 + 120


@pytest.mark.slow
def test_soak_keeps_memory_flat_and_the_ledger_exact(kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    summary_path = tmp_path / "soak.json"
    done = subprocess.run(
        [sys.executable, str(repo_root / "benchmarks" / "soak.py"), "--duration-s", str(duration_s),
         "--bootstrap-servers", kafka_broker.bootstrap_servers, "--workdir", str(tmp_path / "work"),
         "--json-out", str(summary_path)],
        capture_output=True, text=True, timeout=timeout_s, cwd=repo_root,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    summary = json.loads(summary_path.read_text())
    assert summary["verdict"] == "PASS", summary["failures"]
    assert summary["rss"]["flat"], summary["rss"]
    assert summary["rss"]["growth"] <= summary["rss"]["threshold"], summary["rss"]
    ledger = summary["ledger"]
    assert ledger["exact"], ledger
    assert ledger["events_stored"] == ledger["events_distinct"] == ledger["events_expected"] > 0, ledger
    assert ledger["dead_letters"] == ledger["dead_letters_expected"] > 0, ledger
    assert ledger["offsets_at_end"] and ledger["verify_ok"], ledger
    # Steady traffic for the whole run, near the requested rate (the producer thread shares the
    # cores with the broker and the service, so a busy machine slows it a little).
    assert summary["produced"]["seconds"] >= duration_s - 1
    assert summary["produced"]["rate"] >= 0.8 * summary["config"]["rate"], summary["produced"]
    assert summary["latency_s"]["count"] > 0
