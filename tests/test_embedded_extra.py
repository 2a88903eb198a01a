"""eth-tester and py-evm come with the `embedded` extra only: without them, the commands that would run the
in-process chain refuse with the install command (exit 2), not an ImportError traceback.

The CLI runs in a subprocess whose `sys.modules` blocks the module, as if it were not installed.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from ledger import Ledger

# Runs `royalty.cli.main` with an import of `sys.argv[1]` failing like a missing package, then the CLI args.
blocked_cli = (
    "import sys; sys.modules[sys.argv.pop(1)] = None; sys.argv[0] = 'royalty'; from royalty.cli import main; main()"
)
install_command = "pip install -e '.[embedded]'"


def _royalty_without(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", blocked_cli, module, *args], capture_output=True, text=True, timeout=120
    )


def _assert_refused(result: subprocess.CompletedProcess[str], package: str) -> None:
    message = " ".join(result.stderr.split())  # rich wraps at 80 columns outside a terminal
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert install_command in message and f"`{package}` is not installed" in message and "--rpc-url" in message


@pytest.mark.parametrize(("module", "package"), [("eth_tester", "eth-tester"), ("eth", "py-evm")])
def test_deploy_without_the_embedded_extra_names_the_install_command(module: str, package: str) -> None:
    _assert_refused(_royalty_without(module, "deploy"), package)


def test_settle_without_the_embedded_extra_names_the_install_command(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    Ledger.open(str(lake)).close()
    _assert_refused(_royalty_without("eth_tester", "settle", "--lake", str(lake)), "eth-tester")


def test_demo_without_the_embedded_extra_refuses_before_any_work(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    _assert_refused(_royalty_without("eth_tester", "demo", "--workdir", str(workdir)), "eth-tester")
    assert not workdir.exists()


def test_with_rpc_url_the_embedded_extra_is_not_needed() -> None:
    # A node that is not there: the refusal is about the node (exit 75), not about eth-tester.
    result = _royalty_without("eth_tester", "deploy", "--rpc-url", "http://127.0.0.1:9")
    assert result.returncode == 75, result.stderr
    assert install_command not in " ".join(result.stderr.split())
