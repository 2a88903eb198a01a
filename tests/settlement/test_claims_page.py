"""`royalty claims-page`: the contributor claim page in headless Chromium, with a wallet over anvil.

The test injects a small EIP-1193 provider (`window.ethereum`) that forwards every call to anvil's JSON-RPC;
the payee's address is impersonated on anvil, so its `eth_sendTransaction` is signed there, as a wallet
would sign it. Epoch 1 is active and epoch 2 still in its timelock when the page is first opened, so the
figures must come from the active root, not from the newest tree.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result
from web3 import Web3

from ledger import Ledger
from royalty.cli import app
from settlement.onchain.chain import connect, distributor_contract, token_contract
from settlement.onchain.contract_artifacts import distributor_artifact
from settlement.onchain.exceptions import ContractArtifactError
from settlement.onchain.merkle import MerkleTree
from settlement.reports.claims_page import page_abi
from tests.support.anvil import REPO_ROOT, Anvil, anvil  # noqa: F401 - anvil is a fixture
from tests.support.cdp import Browser, png_size
from tests.support.settle_runs import MINT_UNITS, append, expected_units, new_lake, royalty, settle

PAGE_SOURCE = REPO_ROOT / "claims_page"
TIMELOCK_S = 3_600
TOKEN_DECIMALS = 6
# A phone's viewport (CSS pixels): the page must fit it without sideways scrolling.
PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}

# The wallet the test plays: every request goes to anvil, which signs eth_sendTransaction for the
# impersonated payee. `window.rpcMethods` records what the page asked, to check it never signs anything else.
_provider = """
(() => {
  const rpcUrl = %(rpc)s, account = %(account)s;
  let id = 0;
  window.rpcMethods = [];
  window.ethereum = {
    async request({ method, params = [] }) {
      window.rpcMethods.push(method);
      if (method === "eth_requestAccounts" || method === "eth_accounts") return [account];
      const response = await fetch(rpcUrl, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ jsonrpc: "2.0", id: ++id, method, params }),
      });
      const answer = await response.json();
      if (answer.error) throw Object.assign(new Error(answer.error.message), answer.error);
      return answer.result;
    },
    on() {},
    removeListener() {},
  };
})();
"""


def money(units: int) -> str:
    """What the page shows for `units` of the 6-decimal token."""
    whole, fraction = divmod(units, 10**TOKEN_DECIMALS)
    return f"{whole:,}.{fraction:0{TOKEN_DECIMALS}d} TUSD"


@dataclass
class World:
    node: Anvil
    lake: Path
    distributor: str
    page: Path
    payee: str
    expected_1: dict[str, int]
    expected_2: dict[str, int]
    nothing_recorded: Result  # `claims-page` run before anything was settled

    def balance(self, account: str) -> int:
        chain = connect(self.node.url, None)
        return token_contract(chain, distributor_contract(chain, self.distributor)).functions.balanceOf(account).call()

    def claimed(self, account: str) -> int:
        chain = connect(self.node.url, None)
        return distributor_contract(chain, self.distributor).functions.claimed(account).call()


@pytest.fixture(scope="module")
def world(anvil: Anvil, tmp_path_factory: pytest.TempPathFactory) -> World:  # noqa: F811
    """Epoch 1 settled and active, epoch 2 settled and in its timelock, and the page written after both."""
    tmp = tmp_path_factory.mktemp("claims")
    lake = tmp / "lake"
    traffic, offset = new_lake(lake, 80, seed=7)
    nothing_recorded = CliRunner().invoke(app, ["claims-page", "--lake", str(lake), "--to", str(tmp / "early")])
    deployed = royalty(
        "deploy", "--rpc-url", anvil.url, "--timelock-seconds", str(TIMELOCK_S), "--mint-units", str(MINT_UNITS)
    )
    settle(lake, anvil, deployed["distributor"])
    expected_1 = expected_units(lake)
    anvil.advance_time(TIMELOCK_S + 1)
    with Ledger.open(str(lake)) as ledger:
        append(ledger, list(traffic.metered(60, first_index=80)), offset)
    settle(lake, anvil, deployed["distributor"])
    expected_2 = expected_units(lake)
    page = tmp / "page"
    written = royalty("claims-page", "--lake", str(lake), "--to", str(page))
    assert written["epochs"] == [2, 1] and written["distributor"] == deployed["distributor"]
    # The largest payee of epoch 1 whose cumulative grows in epoch 2, so both claims pay something.
    payee = next(a for a in sorted(expected_1, key=lambda a: (-expected_1[a], a)) if expected_2[a] > expected_1[a])
    anvil.rpc("anvil_impersonateAccount", [payee])
    anvil.rpc("anvil_setBalance", [payee, hex(10**18)])
    payee = anvil.w3.to_checksum_address(payee)
    return World(anvil, lake, deployed["distributor"], page, payee, expected_1, expected_2, nothing_recorded)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    chromium = Browser(tmp_path_factory.mktemp("chromium"))
    try:
        yield chromium
    finally:
        chromium.close()


def _open_connected(browser: Browser, world: World, page: Path, account: str | None = None) -> dict:
    """Load the page from disk as a phone with the test wallet of `account` (default: the payee), connect,
    and return what it shows."""
    browser.send("Emulation.setDeviceMetricsOverride", PHONE)
    script = _provider % {"rpc": json.dumps(world.node.url), "account": json.dumps(account or world.payee)}
    added = browser.send("Page.addScriptToEvaluateOnNewDocument", {"source": script})
    try:
        browser.open((page / "index.html").as_uri())
    finally:
        browser.send("Page.removeScriptToEvaluateOnNewDocument", {"identifier": added["identifier"]})
    browser.wait_for("!document.getElementById('connect').disabled", "the page reading its trees")
    browser.evaluate("document.getElementById('connect').click()")
    browser.wait_for(
        "document.getElementById('claimable').dataset.units !== undefined"
        " || document.getElementById('status').dataset.kind === 'error'",
        "the figures after connecting",
    )
    return _shown(browser)


def _shown(browser: Browser) -> dict:
    return browser.evaluate(
        """(() => {
          const el = (id) => document.getElementById(id);
          const units = (id) => el(id).dataset.units ?? null;
          return {
            cumulative: units("cumulative"), claimed: units("claimed"), claimable: units("claimable"),
            text: document.body.innerText, verified: el("proof-status").dataset.verified ?? null,
            claimDisabled: el("claim").disabled, status: el("status").textContent,
            kind: el("status").dataset.kind ?? null,
            paid: el("status").dataset.paidUnits ?? null, account: el("account").textContent,
            overflowPx: document.documentElement.scrollWidth - window.innerWidth,
          };
        })()"""
    )


def _claim(browser: Browser) -> dict:
    browser.evaluate("document.getElementById('claim').click()")
    browser.wait_for(
        "['success', 'error'].includes(document.getElementById('status').dataset.kind)", "the claim's outcome"
    )
    return _shown(browser)


def _figure_is_painted(browser: Browser, element_id: str) -> bool:
    """Whether the screenshot of the element's box changes when its text is hidden: the figure is drawn there."""
    box = browser.evaluate(
        f"(() => {{ const r = document.getElementById('{element_id}').getBoundingClientRect();"
        " return {x: r.x, y: r.y, width: r.width, height: r.height}; })()"
    )
    assert box["width"] > 0 and box["height"] > 0 and box["y"] + box["height"] <= PHONE["height"]
    shown = browser.screenshot(box)
    browser.evaluate(f"document.getElementById('{element_id}').style.visibility = 'hidden'")
    hidden = browser.screenshot(box)
    browser.evaluate(f"document.getElementById('{element_id}').style.visibility = ''")
    return shown != hidden


@pytest.mark.integration
def test_the_page_shows_the_active_roots_figures_and_its_claim_pays_exactly_the_claimable_amount(
    world: World, browser: Browser, tmp_path: Path
) -> None:
    """Epoch 2 waits in its timelock: the page shows epoch 1's cumulative, 0 claimed and all of it claimable,
    with the proof checked against the active root; the claim pays exactly that; reopened, nothing to claim.
    After epoch 2 becomes active, the page offers the difference and its claim pays exactly the difference."""
    payee, cumulative_1, cumulative_2 = (
        world.payee,
        world.expected_1[world.payee.lower()],
        world.expected_2[world.payee.lower()],
    )
    shown = _open_connected(browser, world, world.page)
    assert shown["account"] == payee
    assert (shown["cumulative"], shown["claimed"], shown["claimable"]) == (str(cumulative_1), "0", str(cumulative_1))
    assert shown["verified"] == "true" and "active root of epoch 1" in shown["text"]
    assert "Epoch 2 is in its timelock" in shown["text"] and f"gives you {money(cumulative_2)}" in shown["text"]
    for figure in (money(cumulative_1), money(0), f"Claim {money(cumulative_1)}"):
        assert figure in shown["text"]
    assert not shown["claimDisabled"] and shown["overflowPx"] <= 0, "the page must fit a phone's width"

    screenshot = browser.screenshot()
    (tmp_path / "claims-page.png").write_bytes(screenshot)
    assert png_size(screenshot) == (PHONE["width"] * 2, PHONE["height"] * 2)
    assert all(_figure_is_painted(browser, i) for i in ("cumulative", "claimed", "claimable"))

    before_units = world.balance(payee)
    claimed = _claim(browser)
    assert claimed["kind"] == "success", claimed["status"]
    assert world.balance(payee) - before_units == cumulative_1 == int(claimed["paid"])
    assert world.claimed(payee) == cumulative_1
    assert f"Claimed {money(cumulative_1)}" in claimed["text"]
    assert (claimed["claimed"], claimed["claimable"], claimed["claimDisabled"]) == (str(cumulative_1), "0", True)

    again = _open_connected(browser, world, world.page)
    assert (again["cumulative"], again["claimed"], again["claimable"]) == (str(cumulative_1), str(cumulative_1), "0")
    assert again["claimDisabled"] and "Nothing to claim" in again["status"]

    world.node.advance_time(TIMELOCK_S + 1)
    grown = _open_connected(browser, world, world.page)
    assert (grown["cumulative"], grown["claimed"], grown["claimable"]) == (
        str(cumulative_2),
        str(cumulative_1),
        str(cumulative_2 - cumulative_1),
    )
    assert "active root of epoch 2" in grown["text"] and "timelock" not in grown["text"]
    before_units = world.balance(payee)
    assert _claim(browser)["kind"] == "success"
    assert world.balance(payee) - before_units == cumulative_2 - cumulative_1
    signing = {m for m in browser.evaluate("window.rpcMethods") if "sign" in m or m.startswith("eth_send")}
    assert signing == {"eth_sendTransaction"}
    assert browser.exceptions == []
    # Nothing but the page's own files and the wallet's node (the test wallet's fetches) was requested.
    page_files = {(world.page / name).as_uri() for name in ("index.html", "claims.js", "claims-data.js")}
    assert set(browser.requested_urls) - {world.node.url, world.node.url + "/"} == page_files


@pytest.mark.integration
def test_a_tampered_tree_in_the_page_is_caught_against_the_on_chain_root_and_cannot_be_claimed(
    world: World, browser: Browser, tmp_path: Path
) -> None:
    """The payee's amount raised by one unit in the page's trees: the proof no longer leads to the active root,
    the page says so and offers no claim (the dump's own nodes are not trusted)."""
    tampered = tmp_path / "tampered"
    shutil.copytree(world.page, tampered)
    prefix = "globalThis.royaltyClaimsPage = "
    data = json.loads((tampered / "claims-data.js").read_text().removeprefix(prefix).rstrip(";\n"))
    for tree in data["trees"]:
        for leaf in tree["values"]:
            if leaf["value"][0].lower() == world.payee.lower():
                leaf["value"][1] = str(int(leaf["value"][1]) + 1)
    (tampered / "claims-data.js").write_text(prefix + json.dumps(data) + ";\n")
    shown = _open_connected(browser, world, tampered)
    assert shown["verified"] == "false" and "does NOT lead to the on-chain active root" in shown["text"]
    assert shown["claimDisabled"] and shown["kind"] == "error"


@pytest.mark.integration
def test_a_claim_made_elsewhere_after_the_page_loaded_is_refused_with_the_contracts_error(
    world: World, browser: Browser
) -> None:
    """Another payee's page shows its claimable amount; someone claims it for them meanwhile (anyone may); the
    page's Claim then stops at the simulation with the contract's custom error, and nothing is paid twice."""
    world.node.advance_time(TIMELOCK_S + 1)  # epoch 2 active, whichever test ran before
    other = next(a for a in sorted(world.expected_2, key=lambda a: -world.expected_2[a]) if a != world.payee.lower())
    other = Web3.to_checksum_address(other)
    world.node.rpc("anvil_impersonateAccount", [other])
    world.node.rpc("anvil_setBalance", [other, hex(10**18)])
    shown = _open_connected(browser, world, world.page, other)
    claimable = world.expected_2[other.lower()] - world.claimed(other)
    assert claimable > 0 and shown["claimable"] == str(claimable) and not shown["claimDisabled"]

    tree = MerkleTree.load(json.loads((world.lake / "trees" / "epoch-000002.json").read_text()))
    chain = connect(world.node.url, None)
    contract = distributor_contract(chain, world.distributor)
    call = contract.functions.claim(other, tree.amount_units(other), tree.proof(other))
    receipt = world.node.w3.eth.wait_for_transaction_receipt(call.transact({"from": world.node.w3.eth.accounts[0]}))
    assert receipt["status"] == 1
    balance_units = world.balance(other)

    refused = _claim(browser)
    assert refused["kind"] == "error" and "RoyaltyDistributorNothingToClaim" in refused["status"]
    assert world.balance(other) == balance_units and world.claimed(other) == world.expected_2[other.lower()]


@pytest.mark.integration
def test_an_address_the_trees_do_not_pay_sees_nothing_to_claim(world: World, browser: Browser) -> None:
    """A wallet whose address is in no tree: zero figures, no claim offered, and no error."""
    outsider = world.node.w3.eth.accounts[9]
    assert outsider.lower() not in world.expected_2
    shown = _open_connected(browser, world, world.page, outsider)
    assert (shown["cumulative"], shown["claimed"], shown["claimable"]) == ("0", "0", "0")
    assert shown["claimDisabled"] and "pays this address nothing" in shown["text"] and shown["kind"] != "error"


def test_the_page_takes_the_distributor_abi_from_the_artifact_and_refuses_one_it_cannot_call() -> None:
    """The page's ABI is the artifact's (functions it calls, the Claimed event, every custom error); an ABI
    without `activeRoot`'s named outputs is refused naming what is missing."""
    abi = distributor_artifact().abi
    names = {e["name"] for e in page_abi(abi)}
    used = {"claim", "claimed", "token", "activeRoot", "pendingRoot", "Claimed"}
    assert used | {"RoyaltyDistributorNothingToClaim"} <= names
    without = [e for e in abi if e.get("name") != "activeRoot"]
    with pytest.raises(ContractArtifactError, match=r"activeRoot"):
        page_abi(without)
    unnamed = [{**e, "outputs": [{**o, "name": ""} for o in e.get("outputs", [])]} for e in abi]
    renamed = [u if e.get("name") == "pendingRoot" else e for e, u in zip(abi, unnamed, strict=True)]
    with pytest.raises(ContractArtifactError, match=r"outputs named .* of `pendingRoot`"):
        page_abi(renamed)


@pytest.mark.integration
def test_claims_page_refuses_a_ledger_with_no_epoch_recorded_on_a_chain(world: World) -> None:
    """Nothing settled yet: exit 2 saying to run `royalty settle` first, and no page written."""
    result = world.nothing_recorded
    assert result.exit_code == 2 and "run `royalty settle` first" in " ".join(result.output.split())
    assert not (world.page.parent / "early").exists()


@pytest.mark.integration
def test_a_page_without_the_active_epochs_tree_says_so_and_claims_once_its_published_dump_is_opened(
    world: World, browser: Browser, tmp_path: Path
) -> None:
    """A page written with `--epoch 1` while epoch 2 is active: it names the missing root and offers nothing;
    opening the `epoch-000002.json` dump `settle` published makes it check and show epoch 2's figures."""
    world.node.advance_time(TIMELOCK_S + 1)  # epoch 2 active, whichever test ran before
    only_first = royalty("claims-page", "--lake", str(world.lake), "--to", str(tmp_path / "one"), "--epoch", "1")
    assert only_first["epochs"] == [1]
    shown = _open_connected(browser, world, tmp_path / "one")
    assert shown["kind"] == "error" and "not among this page's trees" in shown["status"]
    assert shown["claimDisabled"] and shown["cumulative"] is None

    browser.set_files("dump-file", [world.lake / "trees" / "epoch-000002.json"])
    browser.wait_for("document.getElementById('cumulative').dataset.units !== undefined", "the figures after the dump")
    loaded = _shown(browser)
    cumulative_2 = world.expected_2[world.payee.lower()]
    assert loaded["verified"] == "true" and "active root of epoch 2" in loaded["text"]
    assert (loaded["cumulative"], loaded["claimed"]) == (str(cumulative_2), str(world.claimed(world.payee)))


@pytest.mark.integration
def test_claims_page_refuses_an_unrecorded_epoch_and_a_file_as_folder(world: World, tmp_path: Path) -> None:
    """`--epoch` never recorded, or `--to` an existing file: exit 2 saying so, and nothing written."""
    runner = CliRunner()
    result = runner.invoke(app, ["claims-page", "--lake", str(world.lake), "--to", str(tmp_path / "p"), "--epoch", "9"])
    assert result.exit_code == 2 and "epoch 9 is not recorded" in " ".join(result.output.split())
    file = tmp_path / "file"
    file.write_text("")
    result = runner.invoke(app, ["claims-page", "--lake", str(world.lake), "--to", str(file)])
    assert result.exit_code == 2 and "is a file" in " ".join(result.output.split())
    assert not (tmp_path / "p").exists() and file.read_text() == ""


def _require_page_toolchain() -> None:
    if shutil.which("node") is None or not (PAGE_SOURCE / "node_modules" / ".package-lock.json").is_file():
        reason = "needs node and `(cd claims_page && npm ci)`"
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


# Runs the page's tree module under node on a dump from stdin: every leaf's proof and the root it leads to.
_node_proofs = """
import { loadTree, leafOf, proofLeadsTo } from "./src/tree.js";
let text = "";
for await (const chunk of process.stdin) text += chunk;
const tree = loadTree(JSON.parse(text));
const out = {};
for (const { account } of tree.leaves.values()) {
  const leaf = leafOf(tree, account);
  out[account] = { proof: leaf.proof, leadsTo: proofLeadsTo(leaf.account, leaf.cumulativeUnits, leaf.proof) };
}
console.log(JSON.stringify({ root: tree.root, out }));
"""


@pytest.mark.integration
def test_the_pages_proofs_are_the_python_trees_proofs_for_every_leaf() -> None:
    """The page's tree code (claims_page/src/tree.js, under node) gives each leaf of a 77-leaf tree the same proof
    as `MerkleTree.proof`, leading to the same root; an odd leaf count covers the unbalanced edge."""
    _require_page_toolchain()
    rng = random.Random(21)
    amounts = {Web3.to_checksum_address(f"0x{rng.getrandbits(160):040x}"): rng.randrange(10**12) for _ in range(77)}
    tree = MerkleTree.from_amounts(amounts)
    node = subprocess.run(
        ["node", "--input-type=module", "-e", _node_proofs],
        cwd=PAGE_SOURCE,
        input=json.dumps(tree.dump()),
        capture_output=True,
        text=True,
    )
    assert node.returncode == 0, node.stderr
    answer = json.loads(node.stdout)
    assert answer["root"] == tree.root_hex and set(answer["out"]) == set(amounts)
    for account, found in answer["out"].items():
        assert found == {"proof": tree.proof_hex(account), "leadsTo": tree.root_hex}


@pytest.mark.integration
def test_the_committed_bundle_is_what_the_source_builds() -> None:
    """claims_page/built/ (committed, so users need no node) equals a fresh esbuild of claims_page/src/."""
    _require_page_toolchain()
    check = subprocess.run(["node", "build.mjs", "--check"], cwd=PAGE_SOURCE, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
