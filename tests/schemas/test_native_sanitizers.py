"""The native decoder under AddressSanitizer and UndefinedBehaviorSanitizer.

Hostile bytes reach `schemas/_fastjson.c` straight from Kafka, so an out-of-bounds read there
would be a crash (or worse) of the ingest service. This builds the module with both sanitizers
and decodes edge cases, random corruptions of a real event, random bytes and every truncation
of an event in a subprocess; any sanitizer report fails the test.
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
print("sanitized run clean")
"""


def _runtime(name: str) -> str | None:
    path = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


@pytest.mark.slow
def test_the_native_decoder_is_clean_under_address_and_undefined_behavior_sanitizers(tmp_path: Path) -> None:
    if shutil.which("gcc") is None or _runtime("libasan.so") is None:
        if os.environ.get("CI"):
            pytest.fail("gcc with libasan is needed for the sanitizer test")
        pytest.skip("gcc with libasan is not installed")
    built = tmp_path / ("_fastjson" + sysconfig.get_config_var("EXT_SUFFIX"))
    subprocess.run(
        [
            "gcc", "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
            "-fno-omit-frame-pointer", "-std=c11", "-fPIC", "-shared",
            f"-I{sysconfig.get_paths()['include']}", str(root / "schemas" / "_fastjson.c"), "-o", str(built),
        ],
        check=True,
    )
    environment = {
        **os.environ,
        "LD_PRELOAD": _runtime("libasan.so") or "",
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
        # Every bytes object its own malloc block, so a read past a message's end is caught (with
        # pymalloc's pools it would land in a neighbouring object, unseen).
        "PYTHONMALLOC": "malloc",
        # pycryptodome's keccak is loaded with RTLD_DEEPBIND, which ASan refuses; pysha3 is not.
        "ETH_HASH_BACKEND": "pysha3",
        "PYTHONPATH": str(root),
    }
    result = subprocess.run(
        [sys.executable, "-c", driver, str(built)], cwd=root, env=environment, capture_output=True, text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "sanitized run clean" in result.stdout
