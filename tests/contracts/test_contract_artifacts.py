"""The committed contract artifacts against a fresh compile of contracts/src with the npm solc."""

import json
import subprocess
from pathlib import Path

from settlement.onchain.contract_artifacts import (
    ARTIFACTS_DIR,
    MODEL_REGISTRY,
    ROYALTY_DISTRIBUTOR,
    TEST_TOKEN,
    load_artifact,
)
from tests.support.anvil import CONTRACTS_DIR, require_node_modules

# solc-js compiles both contracts in a few seconds here; the bound catches a hung compiler.
COMPILE_TIMEOUT_S = 300
# The reentrancy attacker of tests/contracts/test_invariants.py: compiled and committed like the others.
MALICIOUS_TOKEN = "MaliciousToken"
# The fee-on-transfer token of tests/contracts/test_distributor_rules.py.
FEE_TOKEN = "FeeToken"
# The registry, and the governance and wallet contracts its tests deploy (tests/contracts/test_model_registry.py).
REGISTRY_CONTRACTS = (
    MODEL_REGISTRY, "CommunityToken", "CommunityGovernor", "CommunityTimelock", "TestContractWallet"
)


def test_committed_artifacts_equal_a_fresh_compile(tmp_path: Path) -> None:
    """Pins artifact drift: recompiling the sources must reproduce the committed JSON byte for byte."""
    require_node_modules()
    subprocess.run(
        ["node", str(CONTRACTS_DIR / "compile.mjs"), "--out", str(tmp_path)],
        cwd=CONTRACTS_DIR,
        check=True,
        timeout=COMPILE_TIMEOUT_S,
    )
    for name in (ROYALTY_DISTRIBUTOR, TEST_TOKEN, MALICIOUS_TOKEN, FEE_TOKEN, *REGISTRY_CONTRACTS):
        fresh = json.loads((tmp_path / f"{name}.json").read_text())
        committed = json.loads((ARTIFACTS_DIR / f"{name}.json").read_text())
        changed = sorted(key for key in fresh.keys() | committed.keys() if fresh.get(key) != committed.get(key))
        assert not changed, f"{name}: {changed} differ; run `node contracts/compile.mjs` and commit the artifacts"
        assert (tmp_path / f"{name}.json").read_bytes() == (ARTIFACTS_DIR / f"{name}.json").read_bytes()


def test_artifacts_load_with_their_build_facts() -> None:
    """Pins the loader: both artifacts load with bytecode, the pinned compiler and fixed settings."""
    for name in (ROYALTY_DISTRIBUTOR, TEST_TOKEN, MODEL_REGISTRY):
        artifact = load_artifact(name)
        # Creation code opens by setting the free memory pointer: PUSH1 0x80, or PUSH2 with immutables.
        assert artifact.bytecode.startswith(("0x60", "0x61")) and artifact.deployed_bytecode.startswith("0x")
        assert artifact.compiler_version.startswith("0.8.37+")
        assert artifact.settings["optimizer"] == {"enabled": True, "runs": 200}
        assert len(artifact.source_sha256) == 64
