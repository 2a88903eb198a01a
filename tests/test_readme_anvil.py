"""The README's commands that settle and claim the demo's epoch on anvil, run as written (issue 21).

Nightly: a demo and an anvil cost more than CI's budget leaves; the demo itself is tested in CI (tests/test_demo.py).
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import repo_root, royalty_command
from tests.support.anvil import Anvil, anvil_binary

readme_url = "http://127.0.0.1:8545"


def readme_anvil_block() -> list[str]:
    """The bash lines of the README block that follows "The demo's in-process chain is gone"."""
    text = (repo_root / "README.md").read_text()
    block = re.search(r"The demo's in-process chain is gone.*?```bash\n(.*?)```", text, re.DOTALL)
    assert block, "the README no longer says how to settle the demo's epoch on anvil"
    return block.group(1).splitlines()


def as_script(lines: list[str], url: str, python: str) -> str:
    """The README's lines for bash: the test's anvil instead of the one the README starts, and the two values
    `royalty deploy` prints exported from its output (the README says to copy them)."""
    script = ["set -euo pipefail", f'royalty() {{ "{python}" -m royalty.cli "$@"; }}']
    for line in lines:
        if "/anvil " in line:
            continue  # started by the test, on a free port
        line = line.replace(readme_url, url)
        if line.startswith("royalty deploy"):
            line = line.split("#")[0].rstrip() + " | tee deploy.out"
        elif line.startswith("export ROYALTY_DISTRIBUTOR="):
            line = (
                "export ROYALTY_DISTRIBUTOR=$(awk '/^distributor:/{print $2}' deploy.out) "
                "ROYALTY_FROM_BLOCK=$(awk '/^deployment_block:/{print $2}' deploy.out)"
            )
        script.append(line)
    return "\n".join(script) + "\n"


@pytest.mark.nightly
@pytest.mark.slow
def test_the_readme_settles_and_claims_the_demos_latest_epoch_on_anvil(tmp_path: Path) -> None:
    """After `royalty demo --workdir demo`, the README's block deploys on anvil, settles the demo's latest epoch,
    claims the largest payee's cumulative amount and reads the claim back into the ledger."""
    demo = subprocess.run(
        royalty_command("demo", "--workdir", str(tmp_path / "demo"), "--events", "2000"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert demo.returncode == 0, demo.stderr[-3000:]
    node = Anvil(anvil_binary(), tmp_path / "anvil.log")
    try:
        script = as_script(readme_anvil_block(), node.url, sys.executable)
        run = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, f"{script}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
        claims = subprocess.run(
            royalty_command(
                "sql",
                "--lake",
                str(tmp_path / "demo" / "lake"),
                "--format",
                "csv",
                "SELECT epoch, amount_micros = cumulative_claimed_micros AS whole FROM claims WHERE chain_id = 31337",
            ),
            capture_output=True,
            text=True,
            check=True,
        )
        assert claims.stdout.splitlines()[1:] == ["2,True"], claims.stdout
    finally:
        node.stop()
