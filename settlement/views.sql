-- The settlement's analyst views (docs/analytics.md describes every column), over its own tables: registered
-- with the ledger by `settlement.tables.register` and defined after the ledger's (ledger/views.sql).
-- `$${settlement_epoch}` is a ledger table's SQL name (`ledger.recorder.table`), `$${contributor_prefix}` and the other
-- account names come from `settlement.engine.accounts`. Each statement ends with a semicolon at the end of a line.

-- One row per closed settlement epoch: the snapshot range it settled and its totals (micros).
-- suspense_micros is what suspense holds after the epoch; receivable_micros what recipients owe back.
CREATE OR REPLACE TEMP VIEW epochs AS
SELECT epoch, closing_snapshot, event_count, fee_micros, suspense_micros, previous_snapshot, closed_at,
       reversal_count, reversed_micros, dead_letter_count, suspended_micros, released_micros,
       payable_micros, receivable_micros, group_count
FROM ${settlement_epoch};

-- Double-entry postings: positive amounts are debits, negative credits; each entry sums to zero.
CREATE OR REPLACE TEMP VIEW postings AS
SELECT epoch, entry_id, account, amount_micros, entry_kind, model_id, policy_id
FROM ${settlement_posting};

-- Per epoch and recipient (a contributor id): what became payable and the cumulative payable,
-- which never decreases; receivable_micros is owed back after reversals and netted later.
CREATE OR REPLACE TEMP VIEW payables AS
SELECT epoch, recipient, amount_micros, cumulative_micros, credited_micros, earned_micros,
       receivable_micros, payout_address
FROM ${settlement_payable};

-- Every account's balance over all closed epochs (debits positive, credits negative).
CREATE OR REPLACE TEMP VIEW balances AS
SELECT account, sum(amount_micros)::BIGINT AS balance_micros, count(*) AS postings, max(epoch) AS last_epoch
FROM ${settlement_posting}
GROUP BY account;

-- One row per event ever held in suspense (its route was incomplete when its epoch closed): the epoch
-- it entered, and the epoch and outcome (split | reversed) it left with, NULL while still held.
CREATE OR REPLACE TEMP VIEW suspense_items AS
-- source is NULL for items suspended before ledger format 4 (ids were unique then: the id alone matches).
SELECT i.epoch AS suspended_epoch, i.event_id, i.event_time, i.model_id, i.payer, i.compute_provider,
       i.fee_micros, r.epoch AS released_epoch, r.outcome AS release_outcome, i.source
FROM ${settlement_suspense_item} i
LEFT JOIN ${settlement_suspense_release} r
  ON r.event_id = i.event_id AND (r.source = i.source OR r.source IS NULL OR i.source IS NULL);

-- Per closed epoch and holder token (any with carried dust or a `holders-dust:<token>` posting): the dust its holders
-- carry after the epoch, summed from `settlement_holder_dust` (each holder's latest row), and the balance of its
-- `holders-dust:<token>` account then (credits, negated). ledger_checks' holder_dust_balance compares the two.
CREATE OR REPLACE TEMP VIEW holder_dust_accounts AS
WITH carried AS (
    SELECT epoch, token, sum(change_micros) AS moved_micros
    FROM (SELECT epoch, token,
                 carried_micros - coalesce(lag(carried_micros) OVER (PARTITION BY token, holder ORDER BY epoch), 0)
                     AS change_micros
          FROM ${settlement_holder_dust})
    GROUP BY ALL
),
posted AS (
    SELECT epoch, substr(account, length(${holder_dust_prefix}) + 1) AS token, -sum(amount_micros) AS moved_micros
    FROM ${settlement_posting} WHERE account LIKE ${holder_dust_prefix} || '%' GROUP BY ALL
),
tokens AS (SELECT token FROM carried UNION SELECT token FROM posted)
SELECT e.epoch, t.token,
       (sum(coalesce(c.moved_micros, 0)) OVER w)::BIGINT AS carried_micros,
       (sum(coalesce(p.moved_micros, 0)) OVER w)::BIGINT AS account_micros
FROM ${settlement_epoch} e CROSS JOIN tokens t
LEFT JOIN carried c ON c.epoch = e.epoch AND c.token = t.token
LEFT JOIN posted p ON p.epoch = e.epoch AND p.token = t.token
WINDOW w AS (PARTITION BY t.token ORDER BY e.epoch);

-- The metered data files of closed epochs no close has recorded yet (settlement_file_sum): metered_files' columns.
CREATE OR REPLACE TEMP VIEW metered_files_unrecorded AS
SELECT m.* FROM metered_files m
WHERE m.arrived_snapshot <= (SELECT max(closing_snapshot) FROM ${settlement_epoch})
  AND m.path NOT IN (SELECT path FROM ${settlement_file_sum});

-- Those files read now: their events and fee sum. Only these files are opened (a filter on the scan's filename), so a
-- close reads the files that arrived since the previous close once, not every stored event; the close records these
-- rows with its epoch (it sums the files itself, `settlement.input_checks`, unless a deletion touched one).
CREATE OR REPLACE TEMP VIEW metered_file_sums_unrecorded AS
WITH summed AS (
    SELECT filename, count(*) AS event_count, sum(fee_micros)::BIGINT AS fee_micros
    FROM ${inference_metered} WHERE filename IN (SELECT filename FROM metered_files_unrecorded) GROUP BY filename
)
SELECT f.path, f.arrived_snapshot, coalesce(s.event_count, 0)::BIGINT AS event_count,
       coalesce(s.fee_micros, 0)::BIGINT AS fee_micros, f.sha256
FROM metered_files_unrecorded f LEFT JOIN summed s ON s.filename = f.filename;

-- Every metered data file of a closed epoch with its events and fee sum: as recorded by the close that first
-- reconciled it, else read now (metered_file_sums_unrecorded). record_off: the record disagrees with the catalog's
-- row count or the file's recorded SHA-256, or a deletion touched the file since (the record no longer describes it).
CREATE OR REPLACE TEMP VIEW metered_file_sums AS
SELECT m.path, m.arrived_snapshot, r.event_count, r.fee_micros,
       (r.event_count <> m.record_count OR m.deleted_from OR r.sha256 IS DISTINCT FROM m.sha256) AS record_off
FROM ${settlement_file_sum} r JOIN metered_files m ON m.path = r.path
UNION ALL
SELECT path, arrived_snapshot, event_count, fee_micros, FALSE FROM metered_file_sums_unrecorded;

-- The ledger's own checks, one row per check and closed epoch, with how many items it compared, how
-- many disagree, and the sum of the absolute disagreements (micros); `reconciliation` (below) adds the
-- chain's checks. entry_balance: every posting entry sums to zero. recipient_credits: each payable's credited_micros
-- equals what postings credited `contributor:<recipient>`. model_pass_through: model accounts end every
-- epoch at zero. epoch_payable_total: the epoch's payable_micros equals its payables' amounts.
-- billing_vs_epoch: payers were debited the epoch's fees less reversals. events_vs_epoch: the events
-- whose data files the catalog added inside the epoch's snapshot range sum to its fee_micros (a
-- duplicate event reaching the ledger shows here too); each file's figures are read from it once and recorded
-- (metered_file_sums), and a record the catalog's row count, a deletion or the file's recorded SHA-256 contradicts
-- is an item off. suspense_balance: suspense_micros is what the
-- suspense postings hold. conservation: payable + Δsuspense + Δholder dust − Δreceivables = fees − reversed
-- (Δholder dust: what the epoch's `holders-dust:<token>` postings were credited). holder_dust_balance (rows only once some
-- token's holders carried dust; items are the tokens): the carried total of the dust rows equals each token's
-- `holders-dust:<token>` account balance (view holder_dust_accounts).
CREATE OR REPLACE TEMP VIEW ledger_checks AS
WITH e AS (
    SELECT *, coalesce(lag(suspense_micros) OVER (ORDER BY epoch), 0) AS suspense_before_micros,
           coalesce(lag(receivable_micros) OVER (ORDER BY epoch), 0) AS receivable_before_micros
    FROM ${settlement_epoch}
),
entry_sums AS (
    SELECT epoch, entry_id, sum(amount_micros) AS off_micros FROM ${settlement_posting} GROUP BY ALL
),
credits AS (
    SELECT epoch, substr(account, length(${contributor_prefix}) + 1) AS recipient, -sum(amount_micros) AS credited_micros
    FROM ${settlement_posting} WHERE account LIKE ${contributor_prefix} || '%' GROUP BY ALL
),
recipient_diffs AS (
    SELECT coalesce(p.epoch, c.epoch) AS epoch,
           coalesce(p.credited_micros, 0) - coalesce(c.credited_micros, 0) AS off_micros
    FROM ${settlement_payable} p FULL JOIN credits c ON p.epoch = c.epoch AND p.recipient = c.recipient
),
model_sums AS (
    SELECT epoch, account, sum(amount_micros) AS off_micros
    FROM ${settlement_posting} WHERE account LIKE ${model_prefix} || '%' GROUP BY ALL
),
payers AS (
    SELECT epoch, sum(amount_micros) AS billed_micros
    FROM ${settlement_posting} WHERE account LIKE ${payer_prefix} || '%' GROUP BY ALL
),
suspense AS (
    SELECT epoch, -sum(amount_micros) AS moved_micros
    FROM ${settlement_posting} WHERE account = ${suspense_account} GROUP BY ALL
),
-- What token holders' carried dust grew by (`holders-dust:<token>` accounts, credited when a part is carried).
dust AS (
    SELECT epoch, -sum(amount_micros) AS moved_micros
    FROM ${settlement_posting} WHERE account LIKE ${holder_dust_prefix} || '%' GROUP BY ALL
),
-- Each metered data file's events and fees (metered_file_sums: recorded once, or read now); a recorded figure the
-- catalog or the file's recorded SHA-256 contradicts counts as an item off.
arrived AS (
    SELECT e.epoch, sum(f.event_count) AS events, sum(f.fee_micros) AS fee_micros,
           count(*) FILTER (WHERE f.record_off) AS records_off
    FROM metered_file_sums f
    JOIN e ON f.arrived_snapshot > e.previous_snapshot AND f.arrived_snapshot <= e.closing_snapshot
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
    FROM e LEFT JOIN ${settlement_payable} p ON p.epoch = e.epoch GROUP BY e.epoch, e.payable_micros
    UNION ALL
    SELECT 'billing_vs_epoch', e.epoch, 1, 0, abs(e.fee_micros - e.reversed_micros - coalesce(b.billed_micros, 0))
    FROM e LEFT JOIN payers b ON b.epoch = e.epoch
    UNION ALL
    SELECT 'events_vs_epoch', e.epoch, e.event_count,
           abs(e.event_count - coalesce(a.events, 0)) + coalesce(a.records_off, 0),
           abs(e.fee_micros - coalesce(a.fee_micros, 0))
    FROM e LEFT JOIN arrived a ON a.epoch = e.epoch
    UNION ALL
    SELECT 'suspense_balance', e.epoch, 1, 0,
           abs(e.suspense_micros - sum(coalesce(s.moved_micros, 0)) OVER (ORDER BY e.epoch))
    FROM e LEFT JOIN suspense s ON s.epoch = e.epoch
    UNION ALL
    SELECT 'conservation', e.epoch, 1, 0,
           abs(payable_micros + (suspense_micros - suspense_before_micros) + coalesce(d.moved_micros, 0)
               - (receivable_micros - receivable_before_micros) - (fee_micros - reversed_micros))
    FROM e LEFT JOIN dust d ON d.epoch = e.epoch
    UNION ALL
    SELECT 'holder_dust_balance', epoch, count(*), count(*) FILTER (WHERE carried_micros <> account_micros),
           sum(abs(carried_micros - account_micros))
    FROM holder_dust_accounts GROUP BY epoch
)
SELECT check_name, epoch, items_checked::BIGINT AS items_checked,
       (items_off + (difference_micros <> 0 AND items_off = 0)::INTEGER)::BIGINT AS items_off,
       difference_micros::BIGINT AS difference_micros
FROM checks;

-- Checks that must all be zero in a healthy system: the ledger's here; once it has settled, the chain's views
-- (settlement/onchain/views.sql) replace this with the ledger's and the chain's checks together.
CREATE OR REPLACE TEMP VIEW reconciliation AS
SELECT * FROM ledger_checks;
