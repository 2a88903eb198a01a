"""An independent DuckDB SQL implementation of rules 1-6 for one epoch from scratch.

Used to cross-check the polars engine (tests and `benchmarks/split_bench.py`): same rules, written
again as SQL with DuckDB's ASOF join and window functions, driven by a Python loop only where SQL
would need an aggregate inside recursion (admitting models level by level, allocating pools
children first). No reversals and no earlier epochs: every given event is new.
"""

import duckdb
import polars as pl

from schemas.errors import require
from settlement.engine.constants import lineage_depth_max, ppm_total, time_origin_year

_largest_remainder = """
    SELECT *, floor_micros + CASE WHEN rank_in < total_abs - sum(floor_micros) OVER (PARTITION BY alloc)
                                  THEN 1 ELSE 0 END AS part_abs
    FROM (
        SELECT *, row_number() OVER (PARTITION BY alloc ORDER BY remainder DESC, recipient) - 1 AS rank_in
        FROM (
            SELECT *, abs(total)::HUGEINT AS total_abs,
                   (abs(total)::HUGEINT * share_ppm) // {ppm} AS floor_micros,
                   (abs(total)::HUGEINT * share_ppm) % {ppm} AS remainder
            FROM {source}
        )
    )
"""


def _allocate(connection: duckdb.DuckDBPyConnection, source: str, target: str) -> None:
    """`source` has alloc, total, recipient, share_ppm (+ extra columns); `target` gets amount too."""
    connection.execute(
        f"CREATE OR REPLACE TEMP TABLE {target} AS SELECT *, sign(total) * part_abs AS amount FROM ("
        + _largest_remainder.format(ppm=ppm_total, source=source)
        + ")"
    )
    (bad,) = connection.execute(
        f"SELECT count(*) FROM (SELECT alloc FROM {target} GROUP BY alloc HAVING sum(amount) <> any_value(total))"
    ).fetchone()
    require(bad == 0, "a reference allocation sums to its total")


def reference_payables(
    connection: duckdb.DuckDBPyConnection, events: str, models: str, policies: str
) -> pl.DataFrame:
    """Per-recipient credits of one epoch: `events`, `models`, `policies` name relations or subqueries.

    `events` has event_id, source, model_id, event_time, payer, compute_provider, fee_micros; an
    event is its (source, event_id), and of rows repeating one, the least in column order counts,
    as in the engine. `models` and `policies` are the registry rows as known at the closing snapshot.
    """
    c = connection
    c.execute(f"""CREATE OR REPLACE TEMP TABLE r_events AS
        SELECT * EXCLUDE (n) FROM (SELECT *, row_number() OVER (PARTITION BY source, event_id
               ORDER BY event_time, model_id, payer, compute_provider, fee_micros) AS n FROM {events}) WHERE n = 1""")
    events = "r_events"
    c.execute(f"""CREATE OR REPLACE TEMP TABLE r_models AS
        SELECT model_id, parents FROM (SELECT *, row_number() OVER (PARTITION BY model_id
               ORDER BY event_time, event_id) AS n FROM {models}) WHERE n = 1""")
    c.execute("""CREATE OR REPLACE TEMP TABLE r_parent AS
        SELECT model_id, p.model_id AS parent, p.share_ppm
        FROM (SELECT model_id, unnest(parents) AS p FROM r_models)""")
    c.execute("CREATE OR REPLACE TEMP TABLE r_valid (model_id VARCHAR, level INTEGER)")
    for level in range(lineage_depth_max + 1):
        (added,) = c.execute(f"""INSERT INTO r_valid SELECT model_id, {level} FROM r_models m
            WHERE model_id NOT IN (SELECT model_id FROM r_valid)
              AND NOT EXISTS (SELECT 1 FROM r_parent p WHERE p.model_id = m.model_id
                              AND p.parent NOT IN (SELECT model_id FROM r_valid))""").fetchone()
        if not added:
            break
    c.execute("""CREATE OR REPLACE TEMP TABLE r_closure AS
        WITH RECURSIVE up(model_id, member) AS (
            SELECT model_id, model_id FROM r_valid
            UNION SELECT up.model_id, p.parent FROM up JOIN r_parent p ON p.model_id = up.member)
        SELECT * FROM up""")
    c.execute(f"""CREATE OR REPLACE TEMP TABLE r_policy AS
        SELECT event_id AS policy_id, model_id, effective_from, event_time, compute_share_ppm, shares,
          CASE WHEN model_id NOT IN (SELECT model_id FROM r_valid)  -- unregistered, or not validly: not paid
               THEN false
               ELSE coalesce((SELECT list_sort(list(s.recipient[7:] || '/' || s.share_ppm))
                              FROM (SELECT unnest(shares) AS s) WHERE s.recipient LIKE 'model:%'), [])
                  = coalesce((SELECT list_sort(list(parent || '/' || share_ppm)) FROM r_parent rp
                              WHERE rp.model_id = pol.model_id), [])
          END AS usable
        FROM {policies} pol""")
    # Unregistered models with a policy: their own closure, a single member (never complete: suspense).
    c.execute("""INSERT INTO r_closure SELECT DISTINCT model_id, model_id FROM r_policy
                 WHERE model_id NOT IN (SELECT model_id FROM r_models)""")
    c.execute(f"""CREATE OR REPLACE TEMP TABLE r_segment AS
        SELECT DISTINCT cl.model_id, b.start FROM r_closure cl
        JOIN (SELECT model_id, effective_from AS start FROM r_policy
              UNION SELECT model_id, make_timestamptz({time_origin_year}, 1, 1, 0, 0, 0, 'UTC') FROM r_closure)
             b ON b.model_id = cl.member""")
    c.execute("""CREATE OR REPLACE TEMP TABLE r_vector AS
        SELECT s.model_id, s.start, cl.member,
               (SELECT arg_max(p.policy_id, (p.effective_from, p.event_time, p.policy_id)) FROM r_policy p
                WHERE p.model_id = cl.member AND p.effective_from <= s.start) AS policy_id
        FROM r_segment s JOIN r_closure cl ON cl.model_id = s.model_id""")
    c.execute("""CREATE OR REPLACE TEMP TABLE r_pool_key AS
        SELECT v.model_id, v.start, v.member AS pool_model,
               string_agg(w.member || '=' || w.policy_id, ';' ORDER BY w.member) AS pool_key,
               bool_and(w.policy_id IS NOT NULL AND p.usable) AS complete
        FROM r_vector v JOIN r_closure cl ON cl.model_id = v.member
        JOIN r_vector w ON w.model_id = v.model_id AND w.start = v.start AND w.member = cl.member
        LEFT JOIN r_policy p ON p.policy_id = w.policy_id
        GROUP BY ALL""")
    c.execute(f"""CREATE OR REPLACE TEMP TABLE r_routed AS
        SELECT e.model_id, e.compute_provider, k.pool_key, k.complete, pol.compute_share_ppm,
               sum(e.fee_micros::HUGEINT) AS fee
        FROM {events} e ASOF LEFT JOIN (SELECT * FROM r_pool_key WHERE pool_model = model_id) k
          ON k.model_id = e.model_id AND e.event_time >= k.start
        LEFT JOIN r_vector v ON v.model_id = k.model_id AND v.start = k.start AND v.member = k.model_id
        LEFT JOIN r_policy pol ON pol.policy_id = v.policy_id
        GROUP BY ALL""")
    c.execute(
        f"""CREATE OR REPLACE TEMP TABLE r_cut_in AS
        SELECT model_id || '|' || pool_key || '|' || compute_provider AS alloc, fee AS total,
               compute_provider AS recipient, compute_share_ppm AS share_ppm, pool_key, model_id
        FROM r_routed WHERE complete
        UNION ALL
        SELECT model_id || '|' || pool_key || '|' || compute_provider, fee, 'model:' || model_id,
               {ppm_total} - compute_share_ppm, pool_key, model_id
        FROM r_routed WHERE complete"""
    )
    _allocate(c, "r_cut_in", "r_cut")
    c.execute("""CREATE OR REPLACE TEMP TABLE r_pool_share AS
        SELECT DISTINCT k.pool_key, k.pool_model, s.recipient, s.share_ppm, pk.pool_key AS target_key,
               coalesce(val.level, 0) AS level
        FROM r_pool_key k JOIN r_vector v ON v.model_id = k.model_id AND v.start = k.start
             AND v.member = k.pool_model
        JOIN r_policy p ON p.policy_id = v.policy_id
        CROSS JOIN LATERAL (SELECT unnest(p.shares) AS sh) u
        CROSS JOIN LATERAL (SELECT u.sh.recipient AS recipient, u.sh.share_ppm AS share_ppm) s
        LEFT JOIN r_pool_key pk ON pk.model_id = k.model_id AND pk.start = k.start
             AND s.recipient = 'model:' || pk.pool_model
        LEFT JOIN r_valid val ON val.model_id = k.pool_model
        WHERE k.complete""")
    c.execute("""CREATE OR REPLACE TEMP TABLE r_inflow AS
        SELECT pool_key, amount FROM r_cut WHERE recipient LIKE 'model:%'""")
    c.execute(
        "CREATE OR REPLACE TEMP TABLE r_credit AS SELECT recipient, amount FROM r_cut "
        "WHERE recipient NOT LIKE 'model:%'"
    )
    levels = [
        row[0] for row in c.execute("SELECT DISTINCT level FROM r_pool_share ORDER BY 1 DESC").fetchall()
    ]
    for level in levels:
        c.execute(f"""CREATE OR REPLACE TEMP TABLE r_pool_in AS
            SELECT s.pool_key AS alloc, t.total, s.recipient, s.share_ppm, s.target_key
            FROM (SELECT DISTINCT pool_key, recipient, share_ppm, target_key FROM r_pool_share
                  WHERE level = {level}) s
            JOIN (SELECT pool_key, sum(amount) AS total FROM r_inflow GROUP BY 1) t USING (pool_key)""")
        _allocate(c, "r_pool_in", "r_pool_out")
        c.execute(
            "INSERT INTO r_inflow SELECT target_key, amount FROM r_pool_out WHERE target_key IS NOT NULL"
        )
        c.execute("INSERT INTO r_credit SELECT recipient, amount FROM r_pool_out WHERE target_key IS NULL")
    result = c.execute(
        "SELECT recipient, sum(amount)::HUGEINT AS amount_micros FROM r_credit GROUP BY 1 "
        "HAVING sum(amount) <> 0 ORDER BY 1"
    ).fetch_arrow_table()
    return pl.from_arrow(result)  # type: ignore[return-value]
