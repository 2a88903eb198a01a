// The contributor claim page. `royalty claims-page` writes claims-data.js beside this bundle: the chain,
// the distributor, the distributor's ABI (taken from contracts/artifacts when the page was written) and
// the published payout trees. Everything else comes from the wallet (EIP-1193): the active root, what the
// account has claimed, and the claim transaction itself. No server, no network but the wallet's.
import { BaseError, ContractFunctionRevertedError, createClient, custom, erc20Abi, getAddress, parseEventLogs } from "viem";
// The actions one by one rather than the public and wallet clients' decorators: the bundle keeps only these.
import { readContract, simulateContract, waitForTransactionReceipt, writeContract } from "viem/actions";
import { formatAmount, shortHex } from "./format.js";
import { DumpError, leafOf, loadTree, proofLeadsTo } from "./tree.js";

const pageFormat = "royalty-claims-page/v1";
const pollingIntervalMs = 500;
const zeroRoot = `0x${"0".repeat(64)}`;

const $ = (id) => document.getElementById(id);
const state = {
  config: null,
  trees: new Map(), // root -> tree
  provider: null,
  account: null,
  client: null,
  token: null, // {address, decimals, symbol}
  claim: null, // {account, cumulativeUnits, proof, claimableUnits} when the proof leads to the active root
  busy: false,
};

function show(id, text, title) {
  const element = $(id);
  element.textContent = text;
  if (title !== undefined) element.title = title;
}

function setStatus(text, kind = "info") {
  const element = $("status");
  element.textContent = text;
  element.dataset.kind = kind;
}

function amount(units) {
  const { decimals, symbol } = state.token ?? { decimals: 0, symbol: "units" };
  return `${formatAmount(units, decimals)} ${symbol}`;
}

function showFigure(id, units) {
  const element = $(id);
  element.textContent = amount(units);
  element.dataset.units = units.toString();
}

function outputsOf(functionName, values) {
  const entry = state.config.distributorAbi.find((e) => e.type === "function" && e.name === functionName);
  const list = Array.isArray(values) ? values : [values];
  return Object.fromEntries(entry.outputs.map((output, i) => [output.name, list[i]]));
}

function readDistributor(functionName, args = []) {
  return readContract(state.client, {
    address: state.config.distributor,
    abi: state.config.distributorAbi,
    functionName,
    args,
  });
}

function explain(error) {
  if (error?.code === 4001) return "You declined the request in your wallet.";
  if (error instanceof BaseError) {
    const reverted = error.walk((e) => e instanceof ContractFunctionRevertedError);
    if (reverted?.data?.errorName) {
      const args = (reverted.data.args ?? []).map((a) => a.toString()).join(", ");
      return `The distributor refused: ${reverted.data.errorName}(${args}).`;
    }
    return error.shortMessage;
  }
  return error?.message ?? String(error);
}

// ---- the trees in the page ----

function addTree(dump, origin) {
  const tree = loadTree(dump);
  state.trees.set(tree.root, { ...tree, origin });
  renderTrees();
  return tree;
}

function renderTrees(activeRoot, pendingRoot) {
  const list = $("trees");
  list.replaceChildren();
  const trees = [...state.trees.values()].sort((a, b) => (b.epoch ?? 0) - (a.epoch ?? 0));
  for (const tree of trees) {
    const item = document.createElement("li");
    const role = tree.root === activeRoot ? " · active on the chain" : tree.root === pendingRoot ? " · in its timelock" : "";
    item.textContent = `epoch ${tree.epoch ?? "?"} · ${tree.leaves.size.toLocaleString("en-US")} payees · root ${shortHex(tree.root)}${role} (${tree.origin})`;
    item.title = tree.root;
    list.append(item);
  }
}

// ---- the wallet ----

function findProvider() {
  // EIP-6963 wallets announce themselves; an older one only sets window.ethereum.
  let announced = null;
  const listener = (event) => {
    announced ??= event.detail?.provider ?? null;
  };
  window.addEventListener("eip6963:announceProvider", listener);
  window.dispatchEvent(new Event("eip6963:requestProvider"));
  window.removeEventListener("eip6963:announceProvider", listener);
  return announced ?? globalThis.ethereum ?? null;
}

async function onChain(provider) {
  const expected = state.config.chainId;
  let chainId = Number(await provider.request({ method: "eth_chainId" }));
  if (chainId === expected) return true;
  try {
    await provider.request({ method: "wallet_switchEthereumChain", params: [{ chainId: `0x${expected.toString(16)}` }] });
    chainId = Number(await provider.request({ method: "eth_chainId" }));
  } catch {
    // The figures below say what to do.
  }
  if (chainId === expected) return true;
  setStatus(`Your wallet is on chain ${chainId}; switch it to chain ${expected}, where the distributor is, then reload.`, "error");
  return false;
}

async function connect() {
  const provider = findProvider();
  if (provider === null) {
    setStatus("No wallet found: open this page in a browser with a wallet extension, or use `royalty claim`.", "error");
    return;
  }
  state.provider = provider;
  state.client = createClient({ transport: custom(provider), pollingInterval: pollingIntervalMs });
  try {
    const accounts = await provider.request({ method: "eth_requestAccounts" });
    if (!accounts?.length) throw new Error("the wallet shared no account");
    state.account = getAddress(accounts[0]);
  } catch (error) {
    setStatus(`Not connected: ${explain(error)}`, "error");
    return;
  }
  provider.on?.("accountsChanged", (accounts) => {
    state.account = accounts?.length ? getAddress(accounts[0]) : null;
    refresh();
  });
  provider.on?.("chainChanged", () => refresh());
  $("connect").hidden = true;
  await refresh();
}

async function readToken() {
  if (state.token !== null) return;
  const address = await readDistributor("token");
  const read = (functionName) => readContract(state.client, { address, abi: erc20Abi, functionName });
  try {
    const [decimals, symbol] = await Promise.all([read("decimals"), read("symbol")]);
    state.token = { address, decimals: Number(decimals), symbol };
  } catch {
    state.token = { address, decimals: 0, symbol: "units" };
  }
}

// ---- the figures ----

function clearFigures() {
  for (const id of ["cumulative", "claimed", "claimable"]) {
    show(id, "—");
    delete $(id).dataset.units;
  }
  show("proof-status", "");
  show("pending", "");
  state.claim = null;
  $("claim").disabled = true;
}

async function refresh() {
  clearFigures();
  if (state.account === null) {
    $("connect").hidden = false;
    $("account-line").hidden = true;
    setStatus("Connect a wallet to see what you can claim.");
    return;
  }
  show("account", state.account);
  $("account-line").hidden = false;
  try {
    if (!(await onChain(state.provider))) return;
    await readToken();
    const [active, pending, claimedUnits] = await Promise.all([
      readDistributor("activeRoot").then((v) => outputsOf("activeRoot", v)),
      readDistributor("pendingRoot").then((v) => outputsOf("pendingRoot", v)),
      readDistributor("claimed", [state.account]),
    ]);
    renderTrees(active.root, pending.root);
    showFigure("claimed", claimedUnits);
    showPending(pending);
    showActive(active, claimedUnits);
  } catch (error) {
    setStatus(`Could not read the distributor: ${explain(error)}`, "error");
  }
}

function showPending(pending) {
  if (!pending.activeAtSeconds || pending.root === zeroRoot) return;
  const at = new Date(Number(pending.activeAtSeconds) * 1000).toISOString().replace("T", " ").replace(".000Z", " UTC");
  const tree = state.trees.get(pending.root);
  const leaf = tree ? leafOf(tree, state.account) : null;
  const yours = tree ? ` Its tree gives you ${amount(leaf?.cumulativeUnits ?? 0n)} cumulative.` : "";
  show("pending", `Epoch ${pending.epoch} is in its timelock until ${at}; it becomes claimable then.${yours}`);
}

function showActive(active, claimedUnits) {
  if (!active.activeAtSeconds || active.root === zeroRoot) {
    setStatus("No root is claimable on the distributor yet.");
    return;
  }
  const tree = state.trees.get(active.root);
  if (tree === undefined) {
    setStatus(
      `The distributor's active root (epoch ${active.epoch}, ${active.root}) is not among this page's trees: ` +
        "open that epoch's tree dump below, or get a page written after it.",
      "error",
    );
    return;
  }
  const leaf = leafOf(tree, state.account);
  const cumulativeUnits = leaf?.cumulativeUnits ?? 0n;
  showFigure("cumulative", cumulativeUnits);
  const claimableUnits = cumulativeUnits > claimedUnits ? cumulativeUnits - claimedUnits : 0n;
  showFigure("claimable", claimableUnits);
  if (leaf === null) {
    show("proof-status", `Epoch ${active.epoch}'s tree pays this address nothing.`);
    setStatus("Nothing to claim.");
    return;
  }
  if (proofLeadsTo(leaf.account, leaf.cumulativeUnits, leaf.proof) !== active.root) {
    show("proof-status", `The proof in this page does NOT lead to the on-chain active root ${active.root}.`);
    $("proof-status").dataset.verified = "false";
    setStatus("Do not trust these figures: the page's tree does not match the chain.", "error");
    return;
  }
  show("proof-status", `Proof checked in this browser against the active root of epoch ${active.epoch} (${shortHex(active.root)}).`, active.root);
  $("proof-status").dataset.verified = "true";
  if (claimableUnits === 0n) {
    setStatus(`Nothing to claim: everything up to epoch ${active.epoch} is claimed.`);
    return;
  }
  state.claim = { account: leaf.account, cumulativeUnits, proof: leaf.proof, claimableUnits };
  $("claim").disabled = false;
  $("claim").textContent = `Claim ${amount(claimableUnits)}`;
  setStatus("");
}

// ---- the claim ----

async function claim() {
  const pending = state.claim;
  if (pending === null || state.busy) return;
  state.busy = true;
  $("claim").disabled = true;
  try {
    setStatus("Confirm the claim in your wallet…");
    const { request } = await simulateContract(state.client, {
      address: state.config.distributor,
      abi: state.config.distributorAbi,
      functionName: "claim",
      args: [pending.account, pending.cumulativeUnits, pending.proof],
      account: state.account,
    });
    const hash = await writeContract(state.client, { ...request, chain: null });
    setStatus(`Sent ${hash}; waiting for it to be mined…`);
    const receipt = await waitForTransactionReceipt(state.client, { hash });
    if (receipt.status !== "success") throw new Error(`the claim transaction ${hash} reverted`);
    const [event] = parseEventLogs({ abi: state.config.distributorAbi, logs: receipt.logs, eventName: "Claimed" });
    const paidUnits = event?.args?.amount ?? 0n;
    await refresh();
    setStatus(`Claimed ${amount(paidUnits)} in transaction ${hash} (block ${receipt.blockNumber}).`, "success");
    $("status").dataset.paidUnits = paidUnits.toString();
  } catch (error) {
    setStatus(`The claim was not made: ${explain(error)}`, "error");
    $("claim").disabled = state.claim === null;
  } finally {
    state.busy = false;
  }
}

async function openDump(event) {
  const file = event.target.files?.[0];
  if (!file) return;
  try {
    const tree = addTree(JSON.parse(await file.text()), file.name);
    setStatus(`Loaded the tree of epoch ${tree.epoch ?? "?"} from ${file.name}.`);
    if (state.account !== null) await refresh();
  } catch (error) {
    const reason = error instanceof DumpError || error instanceof SyntaxError ? error.message : explain(error);
    setStatus(`Could not load ${file.name}: ${reason}`, "error");
  }
}

function start() {
  const config = globalThis.royaltyClaimsPage;
  if (config?.format !== pageFormat) {
    setStatus("This page's data (claims-data.js) is missing or of another version: write the page again with `royalty claims-page`.", "error");
    return;
  }
  state.config = { ...config, distributor: getAddress(config.distributor) };
  show("network", `chain ${config.chainId} · distributor ${state.config.distributor}`);
  try {
    for (const dump of config.trees) addTree(dump, "in this page");
  } catch (error) {
    setStatus(`This page's trees are damaged: ${error.message}`, "error");
    return;
  }
  $("connect").addEventListener("click", connect);
  $("claim").addEventListener("click", claim);
  $("dump-file").addEventListener("change", openDump);
  $("connect").disabled = false;
  setStatus("Connect a wallet to see what you can claim.");
}

start();
