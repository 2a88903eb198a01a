"""The compiled contracts (ABI + bytecode) committed under `contracts/artifacts/`.

They are read from the repository tree next to this package, so the Python side needs no compiler at
run time; `contracts/compile.mjs` writes them and a test fails when they drift from the sources.
"""

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from settlement.onchain.exceptions import ContractArtifactError

ARTIFACTS_DIR = Path(__file__).resolve().parents[2] / "contracts" / "artifacts"
ROYALTY_DISTRIBUTOR = "RoyaltyDistributor"
TEST_TOKEN = "TestToken"
MODEL_REGISTRY = "ModelRegistry"


@dataclass(frozen=True)
class ContractArtifact:
    """One compiled contract: what web3 needs to deploy and call it, and what it was built from."""

    name: str
    abi: list[dict[str, Any]]
    bytecode: str
    deployed_bytecode: str
    compiler_version: str
    settings: dict[str, Any]
    source_sha256: str


@cache
def load_artifact(name: str) -> ContractArtifact:
    """The committed artifact of contract `name`; raises `ContractArtifactError` if missing or malformed."""
    path = ARTIFACTS_DIR / f"{name}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ContractArtifactError(f"no file at `{path}`", name) from None
    except json.JSONDecodeError as error:
        raise ContractArtifactError(f"`{path}` is not JSON ({error})", name) from None
    try:
        artifact = ContractArtifact(
            name=data["contractName"],
            abi=data["abi"],
            bytecode=data["bytecode"],
            deployed_bytecode=data["deployedBytecode"],
            compiler_version=data["compiler"]["version"],
            settings=data["settings"],
            source_sha256=data["sourceSha256"],
        )
    except (KeyError, TypeError) as error:
        raise ContractArtifactError(f"`{path}` lacks field {error}", name) from None
    if artifact.name != name or not artifact.bytecode.startswith("0x") or len(artifact.bytecode) <= 2:
        raise ContractArtifactError(f"`{path}` holds `{artifact.name}` or has no bytecode", name)
    return artifact


def distributor_artifact() -> ContractArtifact:
    """The RoyaltyDistributor contract."""
    return load_artifact(ROYALTY_DISTRIBUTOR)


def token_artifact() -> ContractArtifact:
    """The mintable TestToken for local chains (never deployed to a real network)."""
    return load_artifact(TEST_TOKEN)


def registry_artifact() -> ContractArtifact:
    """The ModelRegistry contract (lineage, split policies by governors, payout addresses)."""
    return load_artifact(MODEL_REGISTRY)
