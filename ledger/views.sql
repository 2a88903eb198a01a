-- Analyst views over the ledger: the stable, documented surface for SQL users
-- (docs/analytics.md describes every column). The raw tables under lake.main may change
-- shape between versions; these views keep their columns.
-- Each statement ends with a semicolon at the end of a line.

-- One row per accepted paid inference call, deduplicated by event id at ingest.
CREATE OR REPLACE TEMP VIEW inference_events AS
SELECT event_id, event_time, model_id, request_id, payer, compute_provider, input_tokens, output_tokens,
       fee_micros, asset, event_date, source, kafka_topic, kafka_partition, kafka_offset, ingest_batch_id
FROM lake.main.inference_metered;

-- One row per refund or chargeback, naming the event it reverses.
CREATE OR REPLACE TEMP VIEW reversals AS
SELECT event_id, event_time, original_event_id, reason, event_date, source,
       kafka_topic, kafka_partition, kafka_offset, ingest_batch_id
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

-- One row per message that broke the contract, with the reason naming the field and problem.
CREATE OR REPLACE TEMP VIEW dead_letters AS
SELECT reason, raw, error_field, event_id, event_type, received_at, kafka_topic, kafka_partition,
       kafka_offset, raw_size_bytes, raw_sha256, ingest_batch_id
FROM lake.main.dead_letter;

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
