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

-- One row per data file DuckLake records, with its table, its path relative to the table's folder, and the
-- snapshot its rows arrived in: the one that added it, or for a file `royalty compact` merged, its rows' last
-- snapshot. A table's `filename` column ends with `path`. The settlement's views (settlement/views.sql, and
-- settlement/onchain/views.sql) are registered by the settlement and defined after these.
CREATE OR REPLACE TEMP VIEW data_file_arrivals AS
SELECT t.table_name, d.path, coalesce(c.last_snapshot, d.begin_snapshot) AS arrived_snapshot
FROM __ducklake_metadata_lake.ducklake_data_file d
JOIN __ducklake_metadata_lake.ducklake_table t ON t.table_id = d.table_id
LEFT JOIN lake.main.ledger_compaction c ON c.merged_path = 'main/' || t.table_name || '/' || d.path;

-- Every current data file of inference_metered: the filename a scan of the table reports, its path relative to the
-- table's folder and the snapshot its rows arrived in (as data_file_arrivals names them), the row count the catalog
-- recorded, whether a deletion touches it, and the SHA-256 the ledger recorded when it added the file (NULL: none).
CREATE OR REPLACE TEMP VIEW metered_files AS
SELECT DISTINCT f.data_file AS filename, d.path, coalesce(c.last_snapshot, d.begin_snapshot) AS arrived_snapshot,
       d.record_count,
       d.data_file_id IN (SELECT data_file_id FROM __ducklake_metadata_lake.ducklake_delete_file
                          WHERE end_snapshot IS NULL) AS deleted_from,
       k.sha256
FROM ducklake_list_files('lake', 'inference_metered') f
JOIN __ducklake_metadata_lake.ducklake_data_file d
  ON d.end_snapshot IS NULL AND parse_filename(f.data_file) = parse_filename(d.path) AND f.data_file LIKE '%/' || d.path
JOIN __ducklake_metadata_lake.ducklake_table t ON t.table_id = d.table_id AND t.table_name = 'inference_metered'
LEFT JOIN lake.main.ledger_compaction c ON c.merged_path = 'main/inference_metered/' || d.path
LEFT JOIN (SELECT path, any_value(sha256) AS sha256 FROM lake.main.file_checksum GROUP BY path) k
  ON k.path = 'main/inference_metered/' || d.path;
