"""The native Kafka record parser under AddressSanitizer and UndefinedBehaviorSanitizer.

Record batches reach `ingest/_kafka_records.c` straight from the broker, so an out-of-bounds read
there would crash the ingest service (or worse). This builds the module with both sanitizers and,
in a subprocess, parses generated batches (checked against kafka-python), every truncation,
random bit flips and random bytes; any sanitizer report fails the test.
"""

from pathlib import Path

import pytest

from tests.support.sanitizers import run_sanitized

root = Path(__file__).resolve().parents[2]

driver = """
import importlib.util, random, sys
import ingest
spec = importlib.util.spec_from_file_location("ingest._kafka_records", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
sys.modules["ingest._kafka_records"] = module

from kafka.record.memory_records import MemoryRecords
from tests.support.record_batches import Spec, native_records, records_section, stock_records, v2_batch

rng = random.Random(20261124)

def maybe_bytes(size_max):
    return rng.choice([None, rng.randbytes(rng.randrange(size_max))])

sections = []
for _ in range(300):
    specs = [
        Spec(maybe_bytes(30), maybe_bytes(400), [("h" * rng.randrange(5), maybe_bytes(9))] * rng.randrange(4))
        for _ in range(rng.randrange(1, 12))
    ]
    buffer = v2_batch(specs, base_offset=rng.randrange(2**40), codec=rng.choice([0, 1]))
    assert native_records(buffer) == stock_records(buffer)
    batch = MemoryRecords(buffer).next_batch()
    sections.append((bytes(records_section(batch)), batch.records_count))

def parse(section, count):
    try:
        module.decode_records(section, count, rng.randrange(-5, 2**62), rng.randrange(-5, 50))
    except ValueError:
        pass

for section, count in sections[:40]:
    for end in range(len(section)):
        parse(section[:end], count)
for _ in range(100_000):
    section, count = rng.choice(sections)
    flipped = bytearray(section)
    for _ in range(rng.randrange(1, 6)):
        flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
    parse(bytes(flipped), rng.choice([count, count + 1, max(0, count - 1)]))
for _ in range(50_000):
    parse(rng.randbytes(rng.randrange(80)), rng.randrange(-1, 20))
print("sanitized run clean")
"""


@pytest.mark.slow
def test_the_record_parser_is_clean_under_address_and_undefined_behavior_sanitizers(tmp_path: Path) -> None:
    """Pins memory safety on hostile input: a sanitized build parses valid, cut, flipped and random sections."""
    run_sanitized(root / "ingest" / "_kafka_records.c", "_kafka_records", driver, tmp_path)
