"""Many events (250,000 in CI, a million nightly): appended through the normal path and queried with `royalty sql`."""

import json
import subprocess
from pathlib import Path

import pytest

from ingest.sample import SampleShape, SampleTraffic
from ledger import Ledger
from tests.conftest import depth, royalty_command
from tests.ledger.helpers import batch_of


@pytest.mark.slow
def test_append_of_many_events_and_sql_over_them(lake_dir: Path) -> None:
    """Generated events appended in 4 batches; `royalty sql` counts and sums them exactly."""
    traffic = SampleTraffic(SampleShape(models=1_000, contributors=1_000))
    total_events = depth(250_000, 1_000_000)
    batch_events = total_events // 4
    expected_fees_micros = 0
    with Ledger.open(lake_dir) as ledger:
        for first in range(0, total_events, batch_events):
            values = list(traffic.metered(batch_events, first_index=first))
            expected_fees_micros += sum(json.loads(value)["data"]["fee_micros"] for value in values)
            result = ledger.append(*batch_of(values, first_offset=first))
            assert result.events == batch_events
    query = (
        "SELECT count(*) AS events, sum(fee_micros) AS fees_micros, count(DISTINCT event_id) AS ids "
        "FROM inference_events"
    )
    output = subprocess.run(
        royalty_command("sql", "--lake", str(lake_dir), "--format", "json", query),
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(output.stdout) == [
        {"events": total_events, "fees_micros": expected_fees_micros, "ids": total_events}
    ]
