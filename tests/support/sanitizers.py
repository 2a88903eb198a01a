"""Build a C extension with AddressSanitizer and UndefinedBehaviorSanitizer and run a driver on it.

The driver is Python source run in a subprocess with the sanitizer runtime preloaded; it gets the
built module's path as `sys.argv[1]`, must load it under the module's own name, and must print
`sanitized run clean` at its end. Any sanitizer report aborts the subprocess and fails the test.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

repo_root = Path(__file__).resolve().parents[2]
clean_marker = "sanitized run clean"


def _runtime(name: str) -> str | None:
    path = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


def run_sanitized(source: Path | list[Path], module_name: str, driver: str, workdir: Path) -> None:
    """Build `source` (one C file or several) as `module_name` with both sanitizers and run `driver` against it."""
    sources = [str(path) for path in (source if isinstance(source, list) else [source])]
    asan = _runtime("libasan.so") if shutil.which("gcc") else None
    if asan is None:
        if os.environ.get("CI"):
            pytest.fail("gcc with libasan is needed for the sanitizer tests")
        pytest.skip("gcc with libasan is not installed")
    built = workdir / (module_name + sysconfig.get_config_var("EXT_SUFFIX"))
    subprocess.run(
        [
            "gcc", "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
            "-fno-omit-frame-pointer", "-std=c11", "-fPIC", "-shared", "-pthread",
            f"-I{sysconfig.get_paths()['include']}", *sources, "-o", str(built),
        ],
        check=True,
    )  # fmt: skip
    environment = {
        **os.environ,
        "LD_PRELOAD": asan,
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
        # Every object its own malloc block: in pymalloc's arenas a read past a bytes object's end
        # lands in memory ASan considers valid (a parser with a bound check removed passed without this).
        "PYTHONMALLOC": "malloc",
        # pycryptodome's keccak is loaded with RTLD_DEEPBIND, which ASan refuses; pysha3 is not.
        "ETH_HASH_BACKEND": "pysha3",
        "PYTHONPATH": str(repo_root),
    }
    result = subprocess.run(
        [sys.executable, "-c", driver, str(built)], cwd=repo_root, env=environment, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert clean_marker in result.stdout
