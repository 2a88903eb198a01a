"""The native Kafka record parser under AddressSanitizer and UndefinedBehaviorSanitizer.

Record batches reach `ingest/_kafka_records.c` straight from the broker, so an out-of-bounds read
there would crash the ingest service (or worse). This builds the module with both sanitizers and,
in a subprocess, parses generated batches (checked against kafka-python), every truncation,
random bit flips and random bytes; any sanitizer report fails the test.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

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


def _runtime(name: str) -> str | None:
    path = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


@pytest.mark.slow
def test_the_record_parser_is_clean_under_address_and_undefined_behavior_sanitizers(tmp_path: Path) -> None:
    """Pins memory safety on hostile input: a sanitized build parses valid, cut, flipped and random sections."""
    if shutil.which("gcc") is None or _runtime("libasan.so") is None:
        if os.environ.get("CI"):
            pytest.fail("gcc with libasan is needed for the sanitizer test")
        pytest.skip("gcc with libasan is not installed")
    built = tmp_path / ("_kafka_records" + sysconfig.get_config_var("EXT_SUFFIX"))
    subprocess.run(
        [
            "gcc", "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
            "-fno-omit-frame-pointer", "-std=c11", "-fPIC", "-shared",
            f"-I{sysconfig.get_paths()['include']}", str(root / "ingest" / "_kafka_records.c"), "-o", str(built),
        ],
        check=True,
    )  # fmt: skip
    environment = {
        **os.environ,
        "LD_PRELOAD": _runtime("libasan.so") or "",
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
        # Every object its own malloc block: in pymalloc's arenas a read past a bytes object's end
        # lands in memory ASan considers valid (a parser with a bound check removed passed without this).
        "PYTHONMALLOC": "malloc",
        "PYTHONPATH": str(root),
    }
    result = subprocess.run(
        [sys.executable, "-c", driver, str(built)], cwd=root, env=environment, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert "sanitized run clean" in result.stdout
