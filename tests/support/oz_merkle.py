"""`@openzeppelin/merkle-tree` as a test oracle, through `contracts/tools/oz-merkle.mjs --serve`.

One node process serves the whole session: each request is one JSON line carrying a batch of trees,
so a property test pays node's start-up once, not once per example.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from tests.support.anvil import CONTRACTS_DIR, require_node_modules

SCRIPT = CONTRACTS_DIR / "tools" / "oz-merkle.mjs"
STOP_TIMEOUT_S = 10


class OzMerkle:
    """A running `oz-merkle.mjs --serve`; `describe` returns each tree's root, proofs and dump."""

    def __init__(self) -> None:
        require_node_modules()
        self.process = subprocess.Popen(
            ["node", str(SCRIPT), "--serve"],
            cwd=CONTRACTS_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def describe(self, trees: Sequence[Sequence[tuple[str, int]]]) -> list[dict[str, Any]]:
        """For each tree of `(address, amount)` values: `{"root", "proofs" (value order), "dump"}`."""
        assert self.process.stdin is not None and self.process.stdout is not None
        request = {"trees": [[[account, str(amount)] for account, amount in tree] for tree in trees]}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        # A node that died answers with end of file, seen here as an empty line.
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"oz-merkle.mjs exited with {self.process.poll()}")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"oz-merkle.mjs failed: {answer['error']}")
        return answer["trees"]

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT_S)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture(scope="session")
def oz_merkle() -> Iterator[OzMerkle]:
    """The OpenZeppelin reference implementation, one node process for the session."""
    oracle = OzMerkle()
    try:
        yield oracle
    finally:
        oracle.stop()
