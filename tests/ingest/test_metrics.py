"""The ingest service's `/metrics`, as Prometheus reads it (prometheus_client's own parser).

The hand-written exposition it replaces typed its histogram on the `_bucket` series, which the parser read
as a dozen untyped families; here every family must come back with its declared type, and the dead letters
by `reason_code` must add up to the dead letters the ledger holds.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ingest.metrics import IngestMetrics, serve_metrics
from ingest.producer import produce_sample_traffic
from ingest.service import IngestService
from ingest.sources import FileSource
from ledger import Ledger, LedgerBusyError

expected_types = {
    "royalty_ingest_messages": "counter",
    "royalty_ingest_events": "counter",
    "royalty_ingest_duplicates": "counter",
    "royalty_ingest_dead_letters": "counter",
    "royalty_ingest_dead_letters_by_reason": "counter",
    "royalty_ingest_batches": "counter",
    "royalty_ingest_fenced_batches": "counter",
    "royalty_ingest_broker_outages": "counter",
    "royalty_ingest_ledger_outages": "counter",
    "royalty_ingest_append_retries": "counter",
    "royalty_ingest_records_per_second": "gauge",
    "royalty_ingest_consumer_lag": "gauge",
    "royalty_ingest_batch_latency_seconds": "histogram",
}


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, int]:
    """Ingest a small sample (with invalid messages and conflicts) and scrape `/metrics` over HTTP."""
    folder = tmp_path_factory.mktemp("metrics")
    sample = folder / "sample.jsonl"
    produce_sample_traffic(400, None, "t", sample, invalid_ppm=50_000, conflicts_ppm=20_000, seed=3)
    metrics = IngestMetrics()
    server = serve_metrics(metrics, 0)
    try:
        with Ledger.open(str(folder / "lake")) as ledger:
            service = IngestService(
                ledger,
                lambda _: FileSource([str(sample)], ledger, report=lambda _: None),
                "USDC",
                150,
                50,
                "test",
                metrics,
            )
            service.run(until_idle_s=0.0)
            stored = ledger.connection.execute("SELECT count(*) FROM lake.main.dead_letter").fetchone()[0]
        metrics.progress(12.5, {("t", 0): 5, ("t", 1): 7})
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    finally:
        server.shutdown()
    return {family.name: family for family in text_string_to_metric_families(text)}, stored


def _value(family, sample_name: str, **labels: str) -> float:
    return next(
        s.value
        for s in family.samples
        if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_every_family_parses_with_its_type(scraped: tuple[dict, int]) -> None:
    families, _ = scraped
    assert {name: families[name].type for name in expected_types if name in families} == expected_types


def test_the_batch_latency_histogram_is_one_family_with_buckets_sum_and_count(scraped: tuple[dict, int]) -> None:
    families, _ = scraped
    histogram = families["royalty_ingest_batch_latency_seconds"]
    buckets = [s for s in histogram.samples if s.name.endswith("_bucket")]
    assert [s.labels["le"] for s in buckets][-1] == "+Inf"
    count = _value(histogram, "royalty_ingest_batch_latency_seconds_count")
    assert count == buckets[-1].value == _value(families["royalty_ingest_batches"], "royalty_ingest_batches_total")
    assert count >= 2  # 150-message batches over ~400 messages
    assert not [name for name in families if name.startswith("royalty_ingest_batch_latency_seconds_")]


def test_dead_letters_by_reason_code_add_up_to_the_ledger(scraped: tuple[dict, int]) -> None:
    families, stored = scraped
    by_reason = {
        s.labels["reason_code"]: s.value
        for s in families["royalty_ingest_dead_letters_by_reason"].samples
        if s.name.endswith("_total")
    }
    assert stored > 0 and len(by_reason) >= 2  # invalid messages of several kinds, and conflicts
    assert "conflicting_duplicate" in by_reason
    assert sum(by_reason.values()) == stored
    assert _value(families["royalty_ingest_dead_letters"], "royalty_ingest_dead_letters_total") == stored


def test_lag_is_a_gauge_per_partition_and_rate_a_gauge(scraped: tuple[dict, int]) -> None:
    families, _ = scraped
    lag = {s.labels["partition"]: s.value for s in families["royalty_ingest_consumer_lag"].samples}
    assert lag == {"0": 5.0, "1": 7.0}
    assert _value(families["royalty_ingest_records_per_second"], "royalty_ingest_records_per_second") == 12.5


def test_a_revoked_partition_leaves_the_lag_gauge() -> None:
    metrics = IngestMetrics()
    metrics.progress(1.0, {("t", 0): 5, ("t", 1): 7})
    metrics.progress(1.0, {("t", 1): 2})
    lag = families_of(metrics)["royalty_ingest_consumer_lag"]
    assert {s.labels["partition"]: s.value for s in lag.samples} == {"1": 2.0}


def families_of(metrics: IngestMetrics) -> dict:
    return {family.name: family for family in text_string_to_metric_families(metrics.render())}


def test_append_retries_are_counted(tmp_path: Path) -> None:
    """A real ledger whose first two appends fail as busy: one outage, two retries, the batch then stored."""
    sample = tmp_path / "sample.jsonl"
    produce_sample_traffic(50, None, "t", sample, seed=5)
    metrics = IngestMetrics()
    with Ledger.open(str(tmp_path / "lake")) as ledger:
        real_append, failures = ledger.append, [2]

        def busy_then_real(*args: object, **kwargs: object) -> object:
            if failures[0]:
                failures[0] -= 1
                raise LedgerBusyError("lake", 3, "database is locked")
            return real_append(*args, **kwargs)

        ledger.append = busy_then_real  # type: ignore[method-assign]
        service = IngestService(
            ledger,
            lambda _: FileSource([str(sample)], ledger, report=lambda _: None),
            "USDC",
            1_000,
            50,
            "test",
            metrics,
        )
        summary = service.run(until_idle_s=0.0)
    families = families_of(metrics)
    assert _value(families["royalty_ingest_append_retries"], "royalty_ingest_append_retries_total") == 2
    assert _value(families["royalty_ingest_ledger_outages"], "royalty_ingest_ledger_outages_total") == 1
    assert summary.batches == 1 and summary.events > 0
