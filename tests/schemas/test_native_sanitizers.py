"""The native decoder under AddressSanitizer and UndefinedBehaviorSanitizer.

Hostile bytes reach `schemas/_fastjson.c` straight from Kafka, so an out-of-bounds read there
would be a crash (or worse) of the ingest service. This builds the module with both sanitizers
and decodes edge cases, random corruptions of a real event, random bytes and every truncation
of an event in a subprocess; any sanitizer report fails the test.
"""

from pathlib import Path

import pytest

from tests.support.sanitizers import run_sanitized

root = Path(__file__).resolve().parents[2]

driver = """
import importlib.util, random, sys
spec = importlib.util.spec_from_file_location("schemas._fastjson", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
sys.modules["schemas._fastjson"] = module

from tests.schemas import test_native_decoder as cases

assert cases.with_native.native
cases.assert_same_outcome([value for _, value, _ in cases.edge_cases])
cases.test_random_corruptions_of_a_metered_event_decode_the_same()
rng = random.Random(20261124)
junk = [bytes(rng.randrange(256) for _ in range(rng.randrange(600))) for _ in range(20_000)]
junk += [cases.metered[:end] for end in range(len(cases.metered))]
junk += [b"{" * depth for depth in (1, 100, 100_000)]
cases.assert_same_outcome(junk)
nested = [b'{"a":' * depth + b"1" + b"}" * depth for depth in (1, 63, 64, 65, 10_000)]
nested += [b"{" + b",".join(b'"k%d":1' % i for i in range(count)) + b',"k0":2}' for count in (63, 64, 65, 5_000)]
module.repeated_keys(junk + nested)
print("sanitized run clean")
"""


@pytest.mark.slow
def test_the_native_decoder_is_clean_under_address_and_undefined_behavior_sanitizers(tmp_path: Path) -> None:
    run_sanitized(root / "schemas" / "_fastjson.c", "_fastjson", driver, tmp_path)
