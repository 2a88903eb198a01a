"""The contributor claim page: a folder a contributor opens from disk (file://) or from any static host.

`write_claims_page` writes three files into a folder:

- `index.html` and `claims.js`, copied from `claims_page/built/`: the committed esbuild bundle of
  `claims_page/src/` (viem inside), so writing a page needs no node. The page talks to nothing but the
  wallet the browser injects (EIP-1193): it reads the active root, what the account has claimed and the
  token from the distributor, checks the account's proof against that root, and sends `claim`.
- `claims-data.js`: the chain id, the distributor's address, the parts of the distributor's ABI the page
  calls (read from `contracts/artifacts/` now, so a rebuilt contract needs no new bundle) and the published
  payout trees in `write_dump`'s format (OpenZeppelin's dump with `epoch` and `ledgerDigest`). A script,
  not JSON: a page opened from disk may not fetch files beside it.

`claims_page_from_ledger` takes the newest epoch recorded on-chain (or `epoch`) and the one before it: while
the newest root waits out its timelock, claims go against the previous one, and the page checks every proof
against the root the contract calls active, never against the newest tree.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import duckdb
from web3 import Web3

from ledger import recorder
from ledger.ledger import Ledger
from schemas.errors import require
from settlement.exceptions import SettlementError
from settlement.onchain.contract_artifacts import distributor_artifact
from settlement.onchain.exceptions import ContractArtifactError, NoSettlementError
from settlement.onchain.payout_tree import EpochTree, published_dump
from settlement.onchain.settle import read_stored_tree

PAGE_DIR = Path(__file__).resolve().parents[2] / "claims_page" / "built"
page_files = ("index.html", "claims.js")
data_file = "claims-data.js"
page_format = "royalty-claims-page/v1"
# The newest epoch's tree and the one before it, whose root claims go against during the newest's timelock.
page_trees_max = 2

# What the page calls on the distributor: each function's input types and the output names it reads.
_page_functions: dict[str, tuple[list[str], set[str]]] = {
    "claim": (["address", "uint256", "bytes32[]"], set()),
    "claimed": (["address"], set()),
    "token": ([], set()),
    "activeRoot": ([], {"epoch", "root", "activeAtSeconds"}),
    "pendingRoot": ([], {"epoch", "root", "activeAtSeconds"}),
}
# The event the page reads the paid amount from, with the argument names it reads.
_page_events: dict[str, set[str]] = {"Claimed": {"amount"}}


class ClaimsPageError(SettlementError):
    """The claim page cannot be written where asked, or its committed bundle is missing."""

    transient = False


@dataclass(frozen=True)
class ClaimsPage:
    """What `write_claims_page` wrote."""

    directory: str
    chain_id: int
    distributor: str
    epochs: list[int]  # newest first
    leaves: int  # payees in the newest tree


def page_abi(abi: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The distributor ABI entries the page uses: its functions, the `Claimed` event and every custom error.

    Raises `ContractArtifactError` naming what the page needs and the ABI lacks (a contract change the page's
    source must follow).
    """
    functions = {e["name"]: e for e in abi if e.get("type") == "function" and e.get("name") in _page_functions}
    events = {e["name"]: e for e in abi if e.get("type") == "event" and e.get("name") in _page_events}
    for name, (inputs, outputs) in _page_functions.items():
        entry = functions.get(name)
        if entry is None or [i["type"] for i in entry["inputs"]] != inputs:
            _missing(f"function `{name}({','.join(inputs)})`")
        if not outputs <= {o.get("name") for o in entry["outputs"]}:
            _missing(f"outputs named {sorted(outputs)} of `{name}`")
    for name, arguments in _page_events.items():
        if name not in events or not arguments <= {i.get("name") for i in events[name]["inputs"]}:
            _missing(f"event `{name}` with arguments {sorted(arguments)}")
    errors = [e for e in abi if e.get("type") == "error"]
    return [*functions.values(), *events.values(), *errors]


def _missing(what: str) -> NoReturn:
    raise ContractArtifactError(
        f"the claim page calls {what}, which the ABI lacks; update claims_page/src and "
        "settlement/reports/claims_page.py to the contract",
        "RoyaltyDistributor",
    )


def page_data(trees: Sequence[EpochTree], chain_id: int, distributor: str) -> dict[str, Any]:
    """What `claims-data.js` holds, newest tree first."""
    return {
        "format": page_format,
        "chainId": chain_id,
        "distributor": Web3.to_checksum_address(distributor),
        "distributorAbi": page_abi(distributor_artifact().abi),
        "trees": [published_dump(tree) for tree in trees],
    }


def check_page_directory(directory: Path) -> None:
    """Refuse a `directory` that is an existing file (checked again when writing)."""
    if directory.exists() and not directory.is_dir():
        raise ClaimsPageError(f"`{directory}` is a file: pass --to a folder (it is created if missing)")


def write_claims_page(directory: Path, trees: Sequence[EpochTree], chain_id: int, distributor: str) -> ClaimsPage:
    """Write the claim page for `trees` (newest first) on `distributor` of chain `chain_id` into `directory`.

    The folder is created if needed; the page's own files there are replaced, anything else is left alone.
    """
    require(len(trees) > 0, "a claim page is written for at least one tree")
    directory = Path(directory)
    check_page_directory(directory)
    missing = [name for name in page_files if not (PAGE_DIR / name).is_file()]
    if missing:
        raise ClaimsPageError(
            f"the page's bundle is missing from `{PAGE_DIR}` ({', '.join(missing)}): "
            "run `npm ci && npm run build` in claims_page/"
        )
    data = page_data(trees, chain_id, distributor)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for name in page_files:
            shutil.copyfile(PAGE_DIR / name, directory / name)
        text = "globalThis.royaltyClaimsPage = " + json.dumps(data, separators=(",", ":")) + ";\n"
        (directory / data_file).write_text(text, encoding="utf-8")
    except OSError as error:
        raise ClaimsPageError(f"cannot write the page into `{directory}`: {error.strerror or error}") from None
    return ClaimsPage(str(directory), chain_id, data["distributor"], [t.epoch for t in trees], len(trees[0].tree))


def recorded_trees(
    ledger: Ledger, epoch: int | None = None, distributor: str | None = None
) -> tuple[list[EpochTree], int, str]:
    """The trees of the newest `page_trees_max` epochs recorded on-chain up to `epoch`, with the chain and contract.

    The newest record (on `distributor` when given) names the chain and the contract; the epochs before it
    are those recorded on the same ones. Raises `NoSettlementError` when nothing (or not `epoch`) is recorded.
    """
    filters, params = "", []
    if distributor is not None:
        filters, params = "WHERE lower(contract) = lower(?)", [distributor]

    def recorded(connection: duckdb.DuckDBPyConnection) -> list[tuple]:
        if "settlement_record" not in recorder.existing_tables(connection):
            return []
        return connection.execute(
            f"SELECT epoch, chain_id, contract, root, max(recorded_at) AS last_at "
            f"FROM {recorder.table('settlement_record')} {filters} GROUP BY ALL ORDER BY epoch DESC, last_at DESC",
            params,
        ).fetchall()

    rows = ledger.recorder.read(recorded, "read the settlements recorded on-chain")
    on = f" on distributor `{distributor}`" if distributor else ""
    if not rows:
        raise NoSettlementError(f"no epoch of this ledger is recorded on a chain{on} yet: run `royalty settle` first")
    if epoch is not None:
        if epoch not in {row[0] for row in rows}:
            newest = rows[0][0]
            raise NoSettlementError(
                f"epoch {epoch} is not recorded on a chain{on} (the newest recorded is {newest}): "
                "pass an epoch `royalty settle` has recorded, or leave out --epoch"
            )
        rows = [row for row in rows if row[0] <= epoch]
    _, chain_id, contract, _, _ = rows[0]
    same = [row for row in rows if row[1] == chain_id and row[2].lower() == contract.lower()][:page_trees_max]
    trees = []
    for row_epoch, _, _, root, _ in same:
        tree = ledger.recorder.read(lambda c, at=row_epoch: read_stored_tree(c, at), "read a stored tree")
        require(
            tree is not None and tree.root_hex == root,
            f"epoch {row_epoch}: the stored tree gives the root recorded on-chain {root}",
        )
        trees.append(tree)
    return trees, int(chain_id), str(contract)


def claims_page_from_ledger(
    ledger: Ledger, directory: Path, epoch: int | None = None, distributor: str | None = None
) -> ClaimsPage:
    """Write the claim page of the ledger's newest recorded epoch (or `epoch`) into `directory`."""
    trees, chain_id, contract = recorded_trees(ledger, epoch, distributor)
    return write_claims_page(directory, trees, chain_id, contract)
