-- The token holders' analyst views (docs/settlement.md, "Token holders"), over the tables settlement/holders.py
-- declares. `$${holder_transfer}` is a ledger table's SQL name (`ledger.recorder.table`). Each statement ends
-- with a semicolon at the end of a line.

-- Per epoch that paid token holders, token and holder: the holder's balance at the end of the epoch's block range
-- (base units of the token, HUGEINT) and its time-weighted balance over the range, the weight it was paid by
-- (before exclusions: `excluded` lists the addresses the epoch did not pay).
CREATE OR REPLACE TEMP VIEW holder_balances AS
WITH deltas AS (
    SELECT chain_id, token, to_address AS holder, block_number, value_units::HUGEINT AS delta FROM ${holder_transfer}
    UNION ALL
    SELECT chain_id, token, from_address, block_number, -(value_units::HUGEINT) FROM ${holder_transfer}
)
SELECT r.epoch, d.token, d.holder, r.from_block, r.to_block,
       sum(d.delta) AS balance_units,
       sum(d.delta * (r.to_block - greatest(d.block_number, r.from_block) + 1)) AS weighted_units,
       list_contains(string_split(r.excluded, ','), lower(d.holder)) OR lower(d.holder) = lower(d.token)
           AS excluded
FROM ${settlement_epoch_blocks} r
JOIN deltas d ON d.chain_id = r.chain_id AND d.block_number <= r.to_block
WHERE d.holder <> '0x0000000000000000000000000000000000000000'
GROUP BY ALL
HAVING sum(d.delta) <> 0 OR sum(d.delta * (r.to_block - greatest(d.block_number, r.from_block) + 1)) <> 0;

-- Per epoch, token and holder: what the holder was credited from the token's holders' take (micros), from the
-- epoch's `holders` posting entries; the holder's payable row is in `payables` (recipient = its address).
CREATE OR REPLACE TEMP VIEW holder_payables AS
SELECT epoch, substr(entry_id, strpos(entry_id, ':') + 1 + length('holders:')) AS token,
       substr(account, length(${contributor_prefix}) + 1) AS holder, (-amount_micros)::BIGINT AS credited_micros
FROM ${settlement_posting}
WHERE entry_kind = 'holders' AND amount_micros < 0;

-- Token holders' dust (`holder_dust_units_min`): per epoch, token and holder whose carried amount changed, what it
-- carries after the epoch (micros; 0 once paid out) and by how much that changed. `latest` marks each holder's
-- current row: `SELECT * FROM holder_dust WHERE latest AND carried_micros > 0` is what is carried now.
CREATE OR REPLACE TEMP VIEW holder_dust AS
SELECT epoch, token, holder, carried_micros,
       carried_micros - coalesce(lag(carried_micros) OVER (PARTITION BY token, holder ORDER BY epoch), 0)
           AS change_micros,
       epoch = max(epoch) OVER (PARTITION BY token, holder) AS latest
FROM ${settlement_holder_dust};
