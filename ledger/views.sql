-- Analyst views over the ledger: the stable, documented surface for SQL users
-- (docs/analytics.md describes every column). The raw tables under lake.main may change
-- shape between versions; these views keep their columns.
-- Each statement ends with a semicolon at the end of a line.

-- One row per ledger snapshot (commit): what `--as-of-snapshot S` can answer as of.
-- changes maps each kind of change (tables_created, tables_inserted_into, inlined_insert, ...) to what it touched.
CREATE OR REPLACE TEMP VIEW snapshots AS
SELECT snapshot_id, snapshot_time, schema_version, changes, author, commit_message, commit_extra_info
FROM ducklake_snapshots('lake');

-- One row per accepted paid inference call, deduplicated by (source, event_id) at ingest: an event is
-- its source and id together (CloudEvents), so two producers' event `42` are two rows.
CREATE OR REPLACE TEMP VIEW inference_events AS
SELECT event_id, event_time, model_id, request_id, payer, compute_provider, input_tokens, output_tokens,
       fee_micros, asset, event_date, source, kafka_topic, kafka_partition, kafka_offset, ingest_batch_id
FROM lake.main.inference_metered;

-- One row per refund or chargeback, naming the event it reverses: `original_event_id` of
-- `original_source`, or of the reversal's own `source` when original_source is NULL.
CREATE OR REPLACE TEMP VIEW reversals AS
SELECT event_id, event_time, original_event_id, reason, event_date, source,
       kafka_topic, kafka_partition, kafka_offset, ingest_batch_id, original_source
FROM lake.main.inference_reversed;

-- Every registration of a contributor's payout address; the latest one is in force.
CREATE OR REPLACE TEMP VIEW contributor_registrations AS
SELECT event_id, event_time, contributor_id, payout_address, source, kafka_topic, kafka_partition, kafka_offset
FROM lake.main.contributor_registered;

-- Every model registration with its lineage (parents and their share of revenue).
CREATE OR REPLACE TEMP VIEW model_registrations AS
SELECT event_id, event_time, model_id, parents, source, kafka_topic, kafka_partition, kafka_offset
FROM lake.main.model_registered;

-- Every split policy ever set; the one in force at a time is the latest effective_from not after it.
CREATE OR REPLACE TEMP VIEW split_policies AS
SELECT event_id, event_time, model_id, effective_from, compute_share_ppm, shares, source,
       kafka_topic, kafka_partition, kafka_offset
FROM lake.main.split_policy_set;

-- One row per message that broke the contract, with the reason naming the field and problem, and its
-- stable reason_code (docs/analytics.md). Rows stored before ledger format 6 have no stored code: it is
-- derived here from the reason text, by the rules of schemas/reason_codes.py (`whole_message_rules`, then
-- `reason_rules`), in order: tests/schemas/test_reason_codes.py requires this CASE and those lists to agree.
CREATE OR REPLACE TEMP VIEW dead_letters AS
SELECT reason,
       CASE WHEN reason_code IS NOT NULL THEN reason_code
              WHEN error_field IS NULL AND regexp_matches(reason_message, '^Input should be an object') THEN 'not_an_object'
              WHEN regexp_matches(reason_message, '^message is not UTF-8') THEN 'invalid_utf8'
              WHEN regexp_matches(reason_message, '^invalid JSON: EOF while parsing') THEN 'truncated_json'
              WHEN regexp_matches(reason_message, '^invalid JSON: ') THEN 'invalid_json'
              WHEN regexp_matches(reason_message, '^undecodable message ') THEN 'invalid_json'
              WHEN regexp_matches(reason_message, '^a CloudEvent must be a JSON object') THEN 'not_an_object'
              WHEN regexp_matches(reason_message, '^message is [0-9]+ bytes, over the limit') THEN 'message_too_large'
              WHEN regexp_matches(reason_message, '^the Kafka record has no value') THEN 'missing_value'
              WHEN regexp_matches(reason_message, '^duplicate_key: ') THEN 'duplicate_key'
              WHEN regexp_matches(reason_message, '^time_in_future: ') THEN 'time_in_future'
              WHEN regexp_matches(reason_message, '^unknown event type ') THEN 'unknown_event_type'
              WHEN regexp_matches(reason_message, '^missing; expected one of ') THEN 'field_missing'
              WHEN regexp_matches(reason_message, '^Field required') THEN 'field_missing'
              WHEN regexp_matches(reason_message, '^unknown field; ') THEN 'unknown_field'
              WHEN regexp_matches(reason_message, '^asset `') THEN 'asset_not_accepted'
              WHEN regexp_matches(reason_message, '^conflicting duplicate: ') THEN 'conflicting_duplicate'
              WHEN regexp_matches(reason_message, '^settlement epoch [0-9]+: reversal of unknown event ') THEN 'reversal_unresolved'
              WHEN regexp_matches(reason_message, '^settlement epoch [0-9]+: reversal of already reversed event ') THEN 'reversal_repeated'
              WHEN regexp_matches(reason_message, '^settlement epoch [0-9]+: unauthorized source ') THEN 'unauthorized_source'
              WHEN regexp_matches(reason_message, '^settlement epoch [0-9]+: policy notice: ') THEN 'policy_notice'
              WHEN regexp_matches(reason_message, '^settlement epoch [0-9]+: model already registered: ') THEN 'model_already_registered'
              WHEN error_field IS NOT NULL THEN 'field_invalid'
              ELSE 'unclassified' END AS reason_code,
       raw, error_field, event_id, event_type, received_at, kafka_topic, kafka_partition,
       kafka_offset, raw_size_bytes, raw_sha256, ingest_batch_id
FROM (
    SELECT *,
           CASE WHEN error_field IS NOT NULL AND starts_with(reason, 'field `' || error_field || '`: ')
                THEN substr(reason, length(error_field) + 11) ELSE reason END AS reason_message
    FROM lake.main.dead_letter
);

-- The next offset to read per source partition, as stored with the data.
CREATE OR REPLACE TEMP VIEW ingest_offsets AS
SELECT kafka_topic, kafka_partition, max(next_offset) AS next_offset, count(*) AS batches
FROM lake.main.ingest_offset
GROUP BY ALL;

-- One row per append: when, by which writer, and what it stored.
CREATE OR REPLACE TEMP VIEW ingest_batches AS
SELECT ingest_batch_id, committed_at, writer, messages, events, duplicates, dead_letters
FROM lake.main.ingest_batch;

-- One row per closed settlement epoch: the snapshot range it settled and its totals (micros).
-- suspense_micros is what suspense holds after the epoch; receivable_micros what recipients owe back.
CREATE OR REPLACE TEMP VIEW epochs AS
SELECT epoch, closing_snapshot, event_count, fee_micros, suspense_micros, previous_snapshot, closed_at,
       reversal_count, reversed_micros, dead_letter_count, suspended_micros, released_micros,
       payable_micros, receivable_micros, group_count
FROM lake.main.settlement_epoch;

-- Double-entry postings: positive amounts are debits, negative credits; each entry sums to zero.
CREATE OR REPLACE TEMP VIEW postings AS
SELECT epoch, entry_id, account, amount_micros, entry_kind, model_id, policy_id
FROM lake.main.settlement_posting;

-- Per epoch and recipient (a contributor id): what became payable and the cumulative payable,
-- which never decreases; receivable_micros is owed back after reversals and netted later.
CREATE OR REPLACE TEMP VIEW payables AS
SELECT epoch, recipient, amount_micros, cumulative_micros, credited_micros, earned_micros,
       receivable_micros, payout_address
FROM lake.main.settlement_payable;

-- Every account's balance over all closed epochs (debits positive, credits negative).
CREATE OR REPLACE TEMP VIEW balances AS
SELECT account, sum(amount_micros)::BIGINT AS balance_micros, count(*) AS postings, max(epoch) AS last_epoch
FROM lake.main.settlement_posting
GROUP BY account;

-- One row per event ever held in suspense (its route was incomplete when its epoch closed): the epoch
-- it entered, and the epoch and outcome (split | reversed) it left with, NULL while still held.
CREATE OR REPLACE TEMP VIEW suspense_items AS
-- source is NULL for items suspended before ledger format 4 (ids were unique then: the id alone matches).
SELECT i.epoch AS suspended_epoch, i.event_id, i.event_time, i.model_id, i.payer, i.compute_provider,
       i.fee_micros, r.epoch AS released_epoch, r.outcome AS release_outcome, i.source
FROM lake.main.settlement_suspense_item i
LEFT JOIN lake.main.settlement_suspense_release r
  ON r.event_id = i.event_id AND (r.source = i.source OR r.source IS NULL OR i.source IS NULL);

-- The ledger's own checks, one row per check and closed epoch, with how many items it compared, how
-- many disagree, and the sum of the absolute disagreements (micros); `reconciliation` (below) adds the
-- chain's checks. entry_balance: every posting entry sums to zero. recipient_credits: each payable's credited_micros
-- equals what postings credited `contributor:<recipient>`. model_pass_through: model accounts end every
-- epoch at zero. epoch_payable_total: the epoch's payable_micros equals its payables' amounts.
-- billing_vs_epoch: payers were debited the epoch's fees less reversals. events_vs_epoch: the events
-- whose data files the catalog added inside the epoch's snapshot range sum to its fee_micros (a
-- duplicate event reaching the ledger shows here too). suspense_balance: suspense_micros is what the
-- suspense postings hold. conservation: payable + Δsuspense − Δreceivables = fees − reversed.
CREATE OR REPLACE TEMP VIEW ledger_checks AS
WITH e AS (
    SELECT *, coalesce(lag(suspense_micros) OVER (ORDER BY epoch), 0) AS suspense_before_micros,
           coalesce(lag(receivable_micros) OVER (ORDER BY epoch), 0) AS receivable_before_micros
    FROM lake.main.settlement_epoch
),
entry_sums AS (
    SELECT epoch, entry_id, sum(amount_micros) AS off_micros FROM lake.main.settlement_posting GROUP BY ALL
),
credits AS (
    SELECT epoch, substr(account, length('contributor:') + 1) AS recipient, -sum(amount_micros) AS credited_micros
    FROM lake.main.settlement_posting WHERE account LIKE 'contributor:%' GROUP BY ALL
),
recipient_diffs AS (
    SELECT coalesce(p.epoch, c.epoch) AS epoch,
           coalesce(p.credited_micros, 0) - coalesce(c.credited_micros, 0) AS off_micros
    FROM lake.main.settlement_payable p FULL JOIN credits c ON p.epoch = c.epoch AND p.recipient = c.recipient
),
model_sums AS (
    SELECT epoch, account, sum(amount_micros) AS off_micros
    FROM lake.main.settlement_posting WHERE account LIKE 'model:%' GROUP BY ALL
),
payers AS (
    SELECT epoch, sum(amount_micros) AS billed_micros
    FROM lake.main.settlement_posting WHERE account LIKE 'payer:%' GROUP BY ALL
),
suspense AS (
    SELECT epoch, -sum(amount_micros) AS moved_micros
    FROM lake.main.settlement_posting WHERE account = 'suspense' GROUP BY ALL
),
files AS (
    SELECT filename, count(*) AS events, sum(fee_micros) AS fee_micros
    FROM lake.main.inference_metered GROUP BY filename
),
arrived AS (
    SELECT e.epoch, sum(f.events) AS events, sum(f.fee_micros) AS fee_micros
    FROM files f
    JOIN __ducklake_metadata_lake.ducklake_data_file d ON f.filename LIKE '%/' || d.path
    JOIN __ducklake_metadata_lake.ducklake_table t ON t.table_id = d.table_id AND t.table_name = 'inference_metered'
    JOIN e ON d.begin_snapshot > e.previous_snapshot AND d.begin_snapshot <= e.closing_snapshot
    GROUP BY e.epoch
),
checks AS (
    SELECT 'entry_balance' AS check_name, epoch, count(*) AS items_checked,
           count(*) FILTER (WHERE off_micros <> 0) AS items_off, sum(abs(off_micros)) AS difference_micros
    FROM entry_sums GROUP BY epoch
    UNION ALL
    SELECT 'recipient_credits', epoch, count(*), count(*) FILTER (WHERE off_micros <> 0), sum(abs(off_micros))
    FROM recipient_diffs GROUP BY epoch
    UNION ALL
    SELECT 'model_pass_through', epoch, count(*), count(*) FILTER (WHERE off_micros <> 0), sum(abs(off_micros))
    FROM model_sums GROUP BY epoch
    UNION ALL
    SELECT 'epoch_payable_total', e.epoch, 1, 0, abs(e.payable_micros - coalesce(sum(p.amount_micros), 0))
    FROM e LEFT JOIN lake.main.settlement_payable p ON p.epoch = e.epoch GROUP BY e.epoch, e.payable_micros
    UNION ALL
    SELECT 'billing_vs_epoch', e.epoch, 1, 0, abs(e.fee_micros - e.reversed_micros - coalesce(b.billed_micros, 0))
    FROM e LEFT JOIN payers b ON b.epoch = e.epoch
    UNION ALL
    SELECT 'events_vs_epoch', e.epoch, e.event_count, abs(e.event_count - coalesce(a.events, 0)),
           abs(e.fee_micros - coalesce(a.fee_micros, 0))
    FROM e LEFT JOIN arrived a ON a.epoch = e.epoch
    UNION ALL
    SELECT 'suspense_balance', e.epoch, 1, 0,
           abs(e.suspense_micros - sum(coalesce(s.moved_micros, 0)) OVER (ORDER BY e.epoch))
    FROM e LEFT JOIN suspense s ON s.epoch = e.epoch
    UNION ALL
    SELECT 'conservation', epoch, 1, 0,
           abs(payable_micros + (suspense_micros - suspense_before_micros)
               - (receivable_micros - receivable_before_micros) - (fee_micros - reversed_micros))
    FROM e
)
SELECT check_name, epoch, items_checked::BIGINT AS items_checked,
       (items_off + (difference_micros <> 0 AND items_off = 0)::INTEGER)::BIGINT AS items_off,
       difference_micros::BIGINT AS difference_micros
FROM checks;

-- One row per epoch root proposed on-chain and confirmed: the contract and chain, the transaction, and the
-- ledger snapshots the tree was computed from (closing_snapshot) and written at (tree_snapshot).
-- total_units sums every payout address's cumulative payable (token units: one unit per micro);
-- outcome is `proposed`, or `recovered` when a rerun found a killed run's proposal on-chain.
CREATE OR REPLACE TEMP VIEW settlements AS
SELECT r.epoch, r.root, r.total_units, t.leaf_count, t.unaddressed_units, r.chain_id, r.contract, r.tx_hash,
       r.block_number, r.block_hash, r.closing_snapshot, r.tree_snapshot, t.ledger_digest, r.outcome,
       r.recorded_at
FROM lake.main.settlement_record r
JOIN lake.main.settlement_root t USING (epoch);

-- One row per payout address and epoch whose tree was written: its cumulative amount in that root.
CREATE OR REPLACE TEMP VIEW payout_leaves AS
SELECT epoch, account, cumulative_units AS cumulative_micros, tree_index
FROM lake.main.settlement_proof;

-- One row per `Claimed` event of the distributor, read from the chain by `royalty sync-claims` once it had
-- the configured confirmations. amount_micros is what the claim paid (one token unit per micro);
-- cumulative_claimed_micros the account's claimed total after it, which is its leaf in the epoch's root.
CREATE OR REPLACE TEMP VIEW claims AS
SELECT account, epoch, amount_units AS amount_micros, cumulative_units AS cumulative_claimed_micros, block_number,
       block_hash, tx_hash, log_index, chain_id, contract, synced_at
FROM lake.main.settlement_claim;

-- The chain side's checks, in the shape of ledger_checks, one row per settled (or claimed) epoch.
-- root_vs_payables: the proposed root's total is the cumulative payables up to the epoch less those of
-- contributors without an address, and the chain record's total is the tree's. proofs_vs_root: the stored
-- leaves are leaf_count and sum to the root's total. claims_vs_tree: every synced claim's cumulative amount
-- is the account's leaf in the root it claimed against. claims_paid: every claim paid its cumulative amount
-- less the account's previous claim's (a forged, altered, missing or repeated claim row shows here).
CREATE OR REPLACE TEMP VIEW chain_checks AS
WITH settled AS (
    SELECT r.epoch, r.total_units AS recorded_units, t.total_units AS tree_units, t.unaddressed_units, t.leaf_count
    FROM lake.main.settlement_record r JOIN lake.main.settlement_root t USING (epoch)
),
payable_totals AS (
    SELECT s.epoch, sum(p.amount_micros) AS payable_micros
    FROM settled s JOIN lake.main.settlement_payable p ON p.epoch <= s.epoch GROUP BY s.epoch
),
proof_totals AS (
    SELECT epoch, count(*) AS leaves, sum(cumulative_units) AS units FROM lake.main.settlement_proof GROUP BY epoch
),
claim_rows AS (
    SELECT *, cumulative_units - coalesce(lag(cumulative_units) OVER (
               PARTITION BY chain_id, lower(contract), account ORDER BY block_number, log_index), 0) AS due_units
    FROM lake.main.settlement_claim
),
claim_diffs AS (
    SELECT c.epoch, abs(c.cumulative_units - coalesce(l.cumulative_units, 0)) AS leaf_off_micros,
           abs(c.amount_units - c.due_units) AS paid_off_micros
    FROM claim_rows c LEFT JOIN lake.main.settlement_proof l ON l.epoch = c.epoch AND l.account = c.account
),
chain_epochs AS (
    SELECT epoch FROM settled UNION SELECT epoch FROM claim_diffs
),
checks AS (
    SELECT 'root_vs_payables' AS check_name, s.epoch, 1 AS items_checked, 0 AS items_off,
           abs(coalesce(p.payable_micros, 0) - s.unaddressed_units - s.tree_units)
           + abs(s.recorded_units - s.tree_units) AS difference_micros
    FROM settled s LEFT JOIN payable_totals p USING (epoch)
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

-- Checks that must all be zero in a healthy system: the ledger's and, once it has settled, the chain's.
CREATE OR REPLACE TEMP VIEW reconciliation AS
SELECT * FROM ledger_checks UNION ALL SELECT * FROM chain_checks;

-- A ledger that never settled has no chain tables: there, reconciliation is the ledger's checks alone.
CREATE TEMP VIEW IF NOT EXISTS reconciliation AS
SELECT * FROM ledger_checks;
