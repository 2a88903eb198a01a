"""Appending sample traffic to a ledger in batches, as ingest would (shared by the settlement ledger tests)."""

from ingest.sample import SampleShape, SampleTraffic
from ledger import IngestBatch, Ledger, PartitionOffsets
from schemas import BatchDecoder

# The registry of the settlement ledger tests: derived models, so lineage splits are exercised.
shape = SampleShape(models=8, contributors=12, compute_providers=3, derived_models_ppm=600_000)


def append_in_batches(ledger: Ledger, values: list[bytes], first_offset: int, batch_size: int) -> int:
    """Append `values` on partition `t`/0 from `first_offset`, `batch_size` messages a batch; the next offset."""
    decoder = BatchDecoder()
    offset = first_offset
    for index in range(0, len(values), batch_size):
        chunk = values[index : index + batch_size]
        offsets = list(range(offset, offset + len(chunk)))
        batch = IngestBatch.from_messages(chunk, ["t"] * len(chunk), [0] * len(chunk), offsets, decoder)
        ledger.append(batch, [PartitionOffsets("t", 0, offset, offset + len(chunk))])
        offset += len(chunk)
    return offset


def sample_messages(events: int) -> list[bytes]:
    """The sample registry of `shape` followed by `events` metered events (seed 3)."""
    traffic = SampleTraffic(shape, seed=3)
    return list(traffic.registry()) + list(traffic.metered(events))
