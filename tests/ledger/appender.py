"""A separate appending process for crash and concurrency tests.

    python -m tests.ledger.appender LAKE TOPIC BATCHES EVENTS_PER_BATCH SEED [DATA_PATH]

LAKE is a folder or a PostgreSQL catalog string; DATA_PATH is required with the latter.

Prints `committed <snapshot> <next_offset>` after each append, flushed, so the parent knows
exactly what was committed when it kills this process.
"""

import sys

from ingest.sample import SampleShape, SampleTraffic
from ledger import Ledger
from tests.ledger.helpers import batch_of


def main() -> None:
    lake, topic, batches, size, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    data_path = sys.argv[6] if len(sys.argv) > 6 else None
    traffic = SampleTraffic(SampleShape(), seed=seed)
    with Ledger.open(lake, data_path) as ledger:
        next_offset = ledger.stored_offsets().get((topic, 0), 0)
        values = list(traffic.metered(size * batches))
        print(f"ready {next_offset}", flush=True)
        while next_offset < size * batches:
            chunk = values[next_offset : next_offset + size]
            result = ledger.append(*batch_of(chunk, topic=topic, first_offset=next_offset), writer=topic)
            next_offset += len(chunk)
            print(f"committed {result.snapshot_id} {next_offset}", flush=True)


if __name__ == "__main__":
    main()
