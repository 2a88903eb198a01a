// The published payout tree: OpenZeppelin's StandardMerkleTree dump ("standard-v1") of
// (address account, uint256 cumulativeAmount) leaves, as `royalty settle` writes it
// (settlement/onchain/merkle.py). Nothing here trusts the dump: a proof found in it counts only once
// `proofLeadsTo` shows it reaches the root read from the chain.
import { concat, encodeAbiParameters, getAddress, isAddress, keccak256 } from "viem";

export const dumpFormat = "standard-v1";
const leafParameters = [{ type: "address" }, { type: "uint256" }];
const hash32 = /^0x[0-9a-f]{64}$/;

export class DumpError extends Error {}

/** A checked tree from a parsed dump: `{epoch, ledgerDigest, root, nodes, leaves: Map(lowercase account -> leaf)}`. */
export function loadTree(dump) {
  if (dump === null || typeof dump !== "object") throw new DumpError("the tree dump is not a JSON object");
  if (dump.format !== dumpFormat) throw new DumpError(`unknown tree dump format "${dump.format}"; expected "${dumpFormat}"`);
  if (JSON.stringify(dump.leafEncoding) !== JSON.stringify(["address", "uint256"])) {
    throw new DumpError(`leaf encoding ${JSON.stringify(dump.leafEncoding)} is not ["address","uint256"]`);
  }
  const nodes = dump.tree;
  if (!Array.isArray(nodes) || nodes.length === 0 || !nodes.every((n) => typeof n === "string" && hash32.test(n))) {
    throw new DumpError("the tree dump's nodes are not 32-byte lowercase hex strings");
  }
  if (!Array.isArray(dump.values)) throw new DumpError("the tree dump has no values");
  const leaves = new Map();
  for (const entry of dump.values) {
    const [account, amount] = Array.isArray(entry?.value) ? entry.value : [];
    const index = entry?.treeIndex;
    if (typeof account !== "string" || !isAddress(account, { strict: false })) {
      throw new DumpError(`a leaf's account ${JSON.stringify(account)} is not an address`);
    }
    if (typeof amount !== "string" || !/^[0-9]+$/.test(amount)) {
      throw new DumpError(`the amount of ${account} is not a decimal string`);
    }
    if (!Number.isInteger(index) || index < 0 || index >= nodes.length) {
      throw new DumpError(`the treeIndex of ${account} is outside the tree`);
    }
    leaves.set(account.toLowerCase(), { account: getAddress(account), cumulativeUnits: BigInt(amount), treeIndex: index });
  }
  const epoch = Number.isInteger(dump.epoch) ? dump.epoch : null;
  return { epoch, ledgerDigest: dump.ledgerDigest ?? null, root: nodes[0], nodes, leaves };
}

/** keccak256(keccak256(abi.encode(account, cumulativeUnits))), as the contract computes the leaf. */
export function leafHash(account, cumulativeUnits) {
  return keccak256(keccak256(encodeAbiParameters(leafParameters, [account, cumulativeUnits])));
}

function nodeHash(a, b) {
  // Lowercase hex of equal length sorts as the bytes do.
  return a < b ? keccak256(concat([a, b])) : keccak256(concat([b, a]));
}

/** The sibling path from the node at `treeIndex` up to the root, leaf side first. */
export function proofAt(nodes, treeIndex) {
  const proof = [];
  for (let i = treeIndex; i > 0; i = Math.floor((i - 1) / 2)) {
    const sibling = i % 2 === 1 ? i + 1 : i - 1;
    if (sibling >= nodes.length) throw new DumpError(`the tree has no sibling for node ${i}`);
    proof.push(nodes[sibling]);
  }
  return proof;
}

/** The root `proof` leads to from the leaf of (account, cumulativeUnits), as MerkleProof.processProof. */
export function proofLeadsTo(account, cumulativeUnits, proof) {
  return proof.reduce(nodeHash, leafHash(account, cumulativeUnits));
}

/** The leaf of `account` in `tree` with its proof, or null when the tree pays it nothing. */
export function leafOf(tree, account) {
  const leaf = tree.leaves.get(account.toLowerCase());
  if (leaf === undefined) return null;
  return { ...leaf, proof: proofAt(tree.nodes, leaf.treeIndex) };
}
