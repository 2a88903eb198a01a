-- The on-chain settlement's analyst views (docs/analytics.md), over its own tables: registered with the ledger
-- by `settlement.onchain.tables.register`, defined after the settlement's (settlement/views.sql). A ledger that
-- never settled has no chain tables: these views are left out there, and `reconciliation` stays the ledger's
-- checks alone. Placeholders as in settlement/views.sql.

-- One row per epoch root proposed on-chain and confirmed: the contract and chain, the transaction, and the
-- ledger snapshots the tree was computed from (closing_snapshot) and written at (tree_snapshot).
-- total_units sums every payout address's cumulative payable (token units: one unit per micro);
-- outcome is `proposed`, or `recovered` when a rerun found a killed run's proposal on-chain.
CREATE OR REPLACE TEMP VIEW settlements AS
SELECT r.epoch, r.root, r.total_units, t.leaf_count, t.unaddressed_units, r.chain_id, r.contract, r.tx_hash,
       r.block_number, r.block_hash, r.closing_snapshot, r.tree_snapshot, t.ledger_digest, r.outcome,
       r.recorded_at
FROM ${settlement_record} r
JOIN ${settlement_root} t USING (epoch);

-- One row per payout address and epoch whose tree was written: its cumulative amount in that root.
CREATE OR REPLACE TEMP VIEW payout_leaves AS
SELECT epoch, account, cumulative_units AS cumulative_micros, tree_index
FROM ${settlement_proof};

-- One row per `Claimed` event of the distributor, read from the chain by `royalty sync-claims` once it had
-- the configured confirmations. amount_micros is what the claim paid (one token unit per micro);
-- cumulative_claimed_micros the account's claimed total after it, which is its leaf in the epoch's root.
CREATE OR REPLACE TEMP VIEW claims AS
SELECT account, epoch, amount_units AS amount_micros, cumulative_units AS cumulative_claimed_micros, block_number,
       block_hash, tx_hash, log_index, chain_id, contract, synced_at
FROM ${settlement_claim};

-- The chain side's checks, in the shape of ledger_checks, one row per settled (or claimed) epoch.
-- root_vs_payables: the proposed root's total is the cumulative payables up to the epoch less those of
-- contributors without an address (and, for a migrated distributor's epoch, less its predecessors' last roots'
-- totals, still claimable there), and the chain record's total is the tree's. proofs_vs_root: the stored
-- leaves are leaf_count and sum to the root's total. claims_vs_tree: every synced claim's cumulative amount
-- is the account's leaf in the root it claimed against. claims_paid: every claim paid its cumulative amount
-- less the account's previous claim's (a forged, altered, missing or repeated claim row shows here).
CREATE OR REPLACE TEMP VIEW chain_checks AS
WITH settled AS (
    SELECT r.epoch, r.total_units AS recorded_units, t.total_units AS tree_units, t.unaddressed_units, t.leaf_count
    FROM ${settlement_record} r JOIN ${settlement_root} t USING (epoch)
),
payable_totals AS (
    SELECT s.epoch, sum(p.amount_micros) AS payable_micros
    FROM settled s JOIN ${settlement_payable} p ON p.epoch <= s.epoch GROUP BY s.epoch
),
net_of AS (  -- an epoch of a migrated distributor: its leaves are net of every predecessor's last root
    -- (the recursion in a WITH of its own: a WITH RECURSIVE over the whole view made DuckDB 1.4 count each claim
    -- row of claims_paid three times)
    WITH RECURSIVE migrated_from (epoch, predecessor_epoch) AS (  -- every earlier distributor's last epoch
        SELECT epoch, predecessor_epoch FROM ${settlement_migration}
        UNION ALL
        SELECT f.epoch, m.predecessor_epoch
        FROM migrated_from f JOIN ${settlement_migration} m ON m.epoch = f.predecessor_epoch
    )
    SELECT f.epoch, sum(t.total_units) AS owed_units
    FROM migrated_from f JOIN ${settlement_root} t ON t.epoch = f.predecessor_epoch GROUP BY f.epoch
),
proof_totals AS (
    SELECT epoch, count(*) AS leaves, sum(cumulative_units) AS units FROM ${settlement_proof} GROUP BY epoch
),
claim_rows AS (
    SELECT *, cumulative_units - coalesce(lag(cumulative_units) OVER (
               PARTITION BY chain_id, lower(contract), account ORDER BY block_number, log_index), 0) AS due_units
    FROM ${settlement_claim}
),
claim_diffs AS (
    SELECT c.epoch, abs(c.cumulative_units - coalesce(l.cumulative_units, 0)) AS leaf_off_micros,
           abs(c.amount_units - c.due_units) AS paid_off_micros
    FROM claim_rows c LEFT JOIN ${settlement_proof} l ON l.epoch = c.epoch AND l.account = c.account
),
chain_epochs AS (
    SELECT epoch FROM settled UNION SELECT epoch FROM claim_diffs
),
checks AS (
    SELECT 'root_vs_payables' AS check_name, s.epoch, 1 AS items_checked, 0 AS items_off,
           abs(coalesce(p.payable_micros, 0) - s.unaddressed_units - coalesce(n.owed_units, 0) - s.tree_units)
           + abs(s.recorded_units - s.tree_units) AS difference_micros
    FROM settled s LEFT JOIN payable_totals p USING (epoch) LEFT JOIN net_of n USING (epoch)
    UNION ALL
    SELECT 'proofs_vs_root', s.epoch, s.leaf_count, abs(s.leaf_count - coalesce(t.leaves, 0)),
           abs(s.tree_units - coalesce(t.units, 0))
    FROM settled s LEFT JOIN proof_totals t USING (epoch)
    UNION ALL
    SELECT 'claims_vs_tree', e.epoch, count(c.epoch), count(*) FILTER (WHERE c.leaf_off_micros <> 0),
           coalesce(sum(c.leaf_off_micros), 0)
    FROM chain_epochs e LEFT JOIN claim_diffs c USING (epoch) GROUP BY e.epoch
    UNION ALL
    SELECT 'claims_paid', e.epoch, count(c.epoch), count(*) FILTER (WHERE c.paid_off_micros <> 0),
           coalesce(sum(c.paid_off_micros), 0)
    FROM chain_epochs e LEFT JOIN claim_diffs c USING (epoch) GROUP BY e.epoch
)
SELECT check_name, epoch, items_checked::BIGINT AS items_checked,
       (items_off + (difference_micros <> 0 AND items_off = 0)::INTEGER)::BIGINT AS items_off,
       difference_micros::BIGINT AS difference_micros
FROM checks;

-- Checks that must all be zero in a healthy system: the ledger's and the chain's.
CREATE OR REPLACE TEMP VIEW reconciliation AS
SELECT * FROM ledger_checks UNION ALL SELECT * FROM chain_checks;
