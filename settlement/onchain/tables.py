"""The on-chain settlement's append-only ledger tables, declared with `ledger.tables.register_table`.

- `settlement_root`: one row per epoch whose tree was built (root, total, leaf count, digest).
- `settlement_proof`: every leaf of that tree, written in the same transaction; its `proof` (hex) only for trees
  written before ledger format 14, NULL since: the proof is read off the stored nodes.
- `settlement_tree_node`: the tree's nodes (from format 14), `tree_node_chunk_nodes` of 32 bytes a row, in
  OpenZeppelin's dump order (the root first): an account's proof is its siblings there, read by position. Since
  format 23 only the internal nodes (the first leaves - 1): a sibling that is a leaf is hashed from its
  `settlement_proof` row (by `tree_index`); trees written before keep every node.
- `settlement_intent`: a signed `proposeRoot` transaction (hash and nonce), recorded BEFORE it is
  sent, so a run killed after sending finds it and records its outcome instead of proposing again.
- `settlement_record`: the confirmed proposal (tx, block, chain, contract, ledger snapshot).
- `settlement_manifest`: the epoch's bundle manifest (`manifest.json`, verbatim) under settlement-v2, written
  with the tree; its SHA-256 is the root row's `ledger_digest`. An epoch without a row is settlement-v1.
- `settlement_migration`: an epoch whose leaves are net of a predecessor distributor's last root (`deploy
  --migrate-from`), written with its tree.
- `settlement_claim`: every `Claimed` event of the distributor, read back by `royalty sync-claims`.
- `settlement_claim_sync`: one row per block range `sync-claims` read, the cursor of the next run.

Token amounts are `*_units` of the payout token (6 decimals): one unit is one micro of payables.
Roots and hashes are 0x-prefixed lowercase hex; accounts are EIP-55 checksummed.
"""

import pyarrow as pa

from ledger.query import register_views
from ledger.tables import register_table
from schemas.arrow import timestamp_type
from settlement.tables import table_schema
from settlement.views import view_statements

_string, _int64, _timestamp = pa.string(), pa.int64(), timestamp_type

root_schema = table_schema(
    ("epoch", _int64, False),
    ("closing_snapshot", _int64, False),  # the epoch's closing ledger snapshot: the tree's input
    ("root", _string, False),
    ("total_units", _int64, False),  # sum of the leaves: proposeRoot's totalCumulative
    ("leaf_count", _int64, False),
    ("ledger_digest", _string, False),  # sha256 of the leaves and the snapshot, proposed with the root
    ("unaddressed_units", _int64, False),  # payables of contributor ids without a payout address yet
    ("written_at", _timestamp, False),
)

manifest_schema = table_schema(
    ("epoch", _int64, False),
    ("rules_version", _string, False),
    ("manifest", _string, False),  # manifest.json as UTF-8 text, byte for byte
    ("manifest_sha256", _string, False),  # 0x-prefixed: the root row's ledger_digest
    ("written_at", _timestamp, False),
)

proof_schema = table_schema(
    ("epoch", _int64, False),
    ("account", _string, False),
    ("cumulative_units", _int64, False),
    ("tree_index", _int64, False),
    ("proof", pa.list_(_string), True),  # hex, for trees written before format 14; NULL: in settlement_tree_node
)

# Nodes a `settlement_tree_node` row holds (128 KiB): a proof reads the few rows holding its siblings.
tree_node_chunk_nodes = 4096

tree_node_schema = table_schema(
    ("epoch", _int64, False),
    ("chunk", _int64, False),  # the row holds nodes chunk * tree_node_chunk_nodes onwards
    ("nodes", pa.binary(), False),  # 32 bytes a node, in the dump's order (internal nodes only since format 23)
)

intent_schema = table_schema(
    ("epoch", _int64, False),
    ("chain_id", _int64, False),
    ("contract", _string, False),
    ("sender", _string, False),
    ("nonce", _int64, False),
    ("tx_hash", _string, False),
    ("root", _string, False),
    ("prepared_at", _timestamp, False),
)

record_schema = table_schema(
    ("epoch", _int64, False),
    ("root", _string, False),
    ("total_units", _int64, False),
    ("tx_hash", _string, False),
    ("block_number", _int64, False),
    ("block_hash", _string, False),
    ("chain_id", _int64, False),
    ("contract", _string, False),
    ("closing_snapshot", _int64, False),
    ("tree_snapshot", _int64, False),  # the ledger snapshot that wrote the tree and its proofs
    ("outcome", _string, False),  # confirmed (this run sent it) | recovered (a rerun found it on-chain)
    ("recorded_at", _timestamp, False),
)

migration_schema = table_schema(
    ("epoch", _int64, False),  # an epoch whose tree was written for a distributor deployed with --migrate-from
    ("predecessor", _string, False),  # the distributor it took over from (EIP-55)
    ("predecessor_epoch", _int64, False),  # that one's last root: the leaves here are net of its leaves
    ("written_at", _timestamp, False),
)

claim_schema = table_schema(
    ("chain_id", _int64, False),
    ("contract", _string, False),
    ("account", _string, False),
    ("epoch", _int64, False),  # the active root's epoch the claim proved against
    ("amount_units", _int64, False),  # paid by this claim
    ("cumulative_units", _int64, False),  # the account's claimed total after it: its leaf in that root
    ("block_number", _int64, False),
    ("block_hash", _string, False),
    ("tx_hash", _string, False),
    ("log_index", _int64, False),
    ("synced_at", _timestamp, False),
)

claim_sync_schema = table_schema(
    ("chain_id", _int64, False),
    ("contract", _string, False),
    ("from_block", _int64, False),
    ("to_block", _int64, False),
    ("to_block_hash", _string, False),  # checked by the next run: a deeper reorganisation stops it
    ("claims", _int64, False),
    ("synced_at", _timestamp, False),
)

# The tree's nodes are Keccak hashes: zstd took ~0.4 s of CPU on a million leaves' 64 MB and saved 0.003 %.
incompressible_columns: dict[str, tuple[str, ...]] = {"settlement_tree_node": ("nodes",)}

settle_tables: dict[str, tuple[pa.Schema, bool]] = {
    "settlement_root": (root_schema, True),
    "settlement_proof": (proof_schema, False),
    "settlement_tree_node": (tree_node_schema, False),
    "settlement_manifest": (manifest_schema, True),
    "settlement_intent": (intent_schema, True),
    "settlement_record": (record_schema, True),
    "settlement_migration": (migration_schema, True),
    "settlement_claim": (claim_schema, False),
    "settlement_claim_sync": (claim_sync_schema, True),
}


def register() -> None:
    """Declare the tables, which the ledger creates on its next open or append, and their analyst views
    (after the settlement's: `reconciliation` adds the chain's checks to the ledger's)."""
    for name, (schema, inlined) in settle_tables.items():
        register_table(name, schema, inlined=inlined, incompressible=incompressible_columns.get(name, ()))
    register_views("settlement.onchain", chain_view_statements)


def chain_view_statements() -> list[str]:
    """The chain side's views: settlements, payout leaves, claims, chain checks, reconciliation."""
    return view_statements("settlement.onchain")
