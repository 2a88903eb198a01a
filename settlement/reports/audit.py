"""`royalty audit`: recompute an epoch's leaves and root from its bundle alone (docs/spec/settlement-v1.md).

A second implementation on purpose: DuckDB SQL over the bundle's Parquet files, written from the spec, sharing
nothing with the engine (`settlement.engine`) or the publisher. Only the tree encoding is reused: the Merkle
tree builder (`settlement.onchain.merkle`) hashes the recomputed leaves into OpenZeppelin's StandardMerkleTree
root. Each check names the first file, pool, group, recipient or leaf that disagrees.

The digest proposed with the root depends on the epoch's rules version: under settlement-v2 it is the SHA-256 of
`manifest.json` itself (so the root commits to every file the manifest names); an epoch settled under
settlement-v1 proposed the SHA-256 of its leaves, which its manifest repeats and this audit recomputes.
"""

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
from web3 import Web3

from settlement.exceptions import SettlementError
from settlement.onchain.merkle import MerkleTree
from settlement.reports import sum_tree

rules_versions = ("settlement-v1", "settlement-v2", "settlement-v3")
_ppm = 1_000_000
_files = (
    "groups", "pools", "pool_shares", "policies", "models", "reversals", "suspense", "prior_recipients", "prior_leaves",
    "payables", "leaves",
)
# settlement-v3 adds the token holders' weights and dust (spec v3 §6b, §12).
_holder_files = ("holder_weights", "prior_holder_dust", "holder_dust")
_zero_address = "0x" + "00" * 20


class AuditDisagreement(SettlementError):
    """The bundle does not recompute: `what` names the first file, pool, group, recipient or leaf."""

    def __init__(self, what: str, detail: str) -> None:
        self.what = what
        super().__init__(f"{what}: {detail}")


class BundleMissingError(SettlementError):
    """No bundle where `--bundle` points: nothing to audit (a usage error, not a disagreement)."""


@dataclass(frozen=True)
class AuditResult:
    epoch: int
    root: str | None
    leaves: int
    groups: int
    chain_checked: bool
    rules_version: str = "settlement-v2"
    ledger_digest: str | None = None  # the digest the root commits to under the manifest's rules

    def statement(self) -> str:
        chain = "; the distributor's root and ledger digest for the epoch match" if self.chain_checked else ""
        committed = (
            f"; ledger digest {self.ledger_digest} (the SHA-256 of manifest.json)"
            if self.rules_version != "settlement-v1"
            else f"; ledger digest {self.ledger_digest} (settlement-v1: the SHA-256 of the leaves)"
        )
        return (
            f"epoch {self.epoch}: {self.groups:,} allocation groups recompute to {self.leaves:,} leaves and root "
            f"{self.root} under {self.rules_version}; every file matches its SHA-256{committed}{chain}"
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(directory: Path) -> dict:
    """The manifest, after checking its rules version and every file's SHA-256."""
    path = Path(directory) / "manifest.json"
    if not path.is_file():
        raise BundleMissingError(
            f"no manifest.json in {directory}; point --bundle at a folder `royalty publish` wrote"
        )
    body = path.read_bytes()
    manifest = json.loads(body)
    manifest["_sha256"] = "0x" + hashlib.sha256(body).hexdigest()
    if manifest.get("rules_version") not in rules_versions:
        raise AuditDisagreement("manifest.json", f"rules version {manifest.get('rules_version')!r} is not one of "
                                f"{list(rules_versions)} this audit implements")
    listed = manifest.get("files", {})
    for name in (f"{stem}.parquet" for stem in _stems(manifest)):
        if name not in listed or not (Path(directory) / name).is_file():
            raise AuditDisagreement(name, "missing from the bundle or its manifest")
        actual = _sha256(Path(directory) / name)
        if actual != listed[name]["sha256"]:
            raise AuditDisagreement(name, f"SHA-256 {actual} is not the manifest's {listed[name]['sha256']}")
    return manifest


def _stems(manifest: dict) -> tuple[str, ...]:
    """The files a bundle of the manifest's rules version holds (without `.parquet`)."""
    return _files + (_holder_files if manifest.get("rules_version") == "settlement-v3" else ())


def _first(connection: duckdb.DuckDBPyConnection, sql: str) -> tuple | None:
    return connection.execute(sql).fetchone()


def _check_registry(c: duckdb.DuckDBPyConnection) -> None:
    """Pools are the policies they name; groups carry their policy's compute share; shares sum to 1,000,000."""
    bad = _first(c, f"""SELECT pool_id, sum(share_ppm) FROM pool_shares GROUP BY 1 HAVING sum(share_ppm) <> {_ppm}
                        ORDER BY 1 LIMIT 1""")
    if bad:
        raise AuditDisagreement(f"pool {bad[0]}", f"its shares sum to {bad[1]} ppm, not {_ppm}")
    bad = _first(c, """
        WITH published AS (SELECT pool_id, list_sort(list(recipient || '=' || share_ppm)) AS shares
                           FROM pool_shares GROUP BY 1),
             named AS (SELECT p.pool_id, p.policy_id,
                              (SELECT list_sort(list(s.recipient || '=' || s.share_ppm))
                               FROM (SELECT unnest(pol.shares) AS s)) AS shares
                       FROM pools p LEFT JOIN policies pol ON pol.policy_id = p.policy_id AND pol.model_id = p.model_id)
        SELECT n.pool_id, n.policy_id FROM named n LEFT JOIN published u USING (pool_id)
        WHERE n.shares IS NULL OR u.shares IS NULL OR n.shares <> u.shares ORDER BY 1 LIMIT 1""")
    if bad:
        raise AuditDisagreement(f"pool {bad[0]}", f"its shares are not those of policy {bad[1]} in policies.parquet")
    bad = _first(c, """
        SELECT s.pool_id, s.recipient FROM pool_shares s LEFT JOIN pools t ON t.pool_id = s.target_pool_id
        WHERE (s.recipient LIKE 'model:%' OR s.recipient LIKE 'dataset:%')
          AND (t.pool_id IS NULL OR t.model_id <> CASE WHEN s.recipient LIKE 'model:%' THEN s.recipient[7:]
                                                       ELSE s.recipient END)
           OR (s.target_pool_id IS NOT NULL AND s.recipient NOT LIKE 'model:%' AND s.recipient NOT LIKE 'dataset:%')
        ORDER BY 1, 2 LIMIT 1""")
    if bad:
        raise AuditDisagreement(f"pool {bad[0]}", f"its share to {bad[1]} does not pay into that record's pool")
    bad = _first(c, """
        SELECT g.kind, g.model_id, g.pool_id, g.compute_provider, g.hour FROM groups g
        LEFT JOIN pools p USING (pool_id) LEFT JOIN policies pol ON pol.policy_id = p.policy_id
        WHERE p.model_id IS DISTINCT FROM g.model_id OR pol.compute_share_ppm IS DISTINCT FROM g.compute_share_ppm
        ORDER BY ALL LIMIT 1""")
    if bad:
        raise AuditDisagreement(_group(bad), "its pool is not its model's, or its compute share is not its policy's")
    bad = _first(c, """
        SELECT p.pool_id FROM pools p LEFT JOIN models m USING (model_id)
        WHERE p.model_id NOT LIKE 'dataset:%' AND (m.model_id IS NULL OR
              coalesce((SELECT list_sort(list(s.recipient[7:] || '=' || s.share_ppm)) FROM pool_shares s
                        WHERE s.pool_id = p.pool_id AND s.recipient LIKE 'model:%'), [])
              <> coalesce((SELECT list_sort(list(x.model_id || '=' || x.share_ppm))
                           FROM (SELECT unnest(m.parents) AS x)), []))
        ORDER BY 1 LIMIT 1""")
    if bad:
        raise AuditDisagreement(f"pool {bad[0]}", "its shares to models are not its model's registered parents")
    # A group's pool, and every pool it pays into, is under the policy in force during the group's hour: one in
    # effect before the hour ends, and no later policy of the record in effect from its start. A taken-back
    # group was routed with the registry as of its original's epoch, so only new and released ones are checked.
    bad = _first(c, """
        WITH RECURSIVE reach(kind, model_id, group_pool, compute_provider, hour, pool_id) AS (
            SELECT kind, model_id, pool_id, compute_provider, hour, pool_id FROM groups WHERE kind <> 'reversal'
            UNION SELECT r.kind, r.model_id, r.group_pool, r.compute_provider, r.hour, s.target_pool_id
            FROM reach r JOIN pool_shares s ON s.pool_id = r.pool_id WHERE s.target_pool_id IS NOT NULL)
        SELECT r.kind, r.model_id, r.group_pool, r.compute_provider, r.hour FROM reach r
        JOIN pools p USING (pool_id) JOIN policies pol ON pol.policy_id = p.policy_id
        WHERE r.hour + INTERVAL 1 HOUR <= pol.effective_from
           OR EXISTS (SELECT 1 FROM policies q WHERE q.model_id = pol.model_id AND q.effective_from <= r.hour
                      AND (q.effective_from > pol.effective_from
                           OR (q.effective_from = pol.effective_from AND q.event_time > pol.event_time)
                           OR (q.effective_from = pol.effective_from AND q.event_time = pol.event_time
                               AND q.policy_id > pol.policy_id)))
        ORDER BY ALL LIMIT 1""")
    if bad:
        raise AuditDisagreement(_group(bad), "a pool it pays into is not under the policy in force during its hour")


def _group(row: tuple) -> str:
    return f"group ({', '.join(str(v) for v in row)})"


_allocate_sql = """
    CREATE OR REPLACE TEMP TABLE {target} AS
    SELECT alloc, recipient, target_pool_id, total,
           sign(total) * (floor_abs + CASE WHEN rank_in < abs(total) - sum(floor_abs) OVER (PARTITION BY alloc)
                                           THEN 1 ELSE 0 END) AS amount
    FROM (SELECT *, row_number() OVER (PARTITION BY alloc ORDER BY remainder DESC, recipient) - 1 AS rank_in
          FROM (SELECT *, (abs(total) * share_ppm) // {ppm} AS floor_abs, (abs(total) * share_ppm) % {ppm} AS remainder
                FROM {source}))
"""


def _allocate(c: duckdb.DuckDBPyConnection, source: str, target: str) -> None:
    c.execute(_allocate_sql.format(target=target, source=source, ppm=_ppm))


def _credits(c: duckdb.DuckDBPyConnection) -> None:
    """The epoch's credits per recipient (spec: compute cut, then pools from the highest level down)."""
    c.execute(f"""CREATE TEMP TABLE cut_in AS
        WITH sums AS (SELECT model_id, pool_id, compute_provider, compute_share_ppm,
                             sum(fee_micros::HUGEINT) AS total FROM groups GROUP BY ALL)
        SELECT model_id || '|' || pool_id || '|' || compute_provider AS alloc, total, compute_provider AS recipient,
               compute_share_ppm AS share_ppm, NULL::VARCHAR AS target_pool_id FROM sums
        UNION ALL
        SELECT model_id || '|' || pool_id || '|' || compute_provider, total, 'model:' || model_id,
               {_ppm} - compute_share_ppm, pool_id FROM sums""")
    _allocate(c, "cut_in", "cut_out")
    c.execute("CREATE TEMP TABLE inflow AS SELECT target_pool_id AS pool_id, amount FROM cut_out "
              "WHERE target_pool_id IS NOT NULL")
    c.execute("CREATE TEMP TABLE credit AS SELECT recipient, amount FROM cut_out WHERE target_pool_id IS NULL")
    for (level,) in c.execute("SELECT DISTINCT level FROM pools ORDER BY 1 DESC").fetchall():
        c.execute(f"""CREATE OR REPLACE TEMP TABLE pool_in AS
            SELECT s.pool_id AS alloc, t.total, s.recipient, s.share_ppm, s.target_pool_id
            FROM pool_shares s JOIN pools p USING (pool_id)
            JOIN (SELECT pool_id, sum(amount) AS total FROM inflow GROUP BY 1) t USING (pool_id)
            WHERE p.level = {int(level)}""")
        _allocate(c, "pool_in", "pool_out")
        c.execute("INSERT INTO inflow SELECT target_pool_id, amount FROM pool_out WHERE target_pool_id IS NOT NULL")
        c.execute("INSERT INTO credit SELECT recipient, amount FROM pool_out WHERE target_pool_id IS NULL")


def _largest_remainder_by_weight(total: int, weights: list[tuple[str, int]]) -> dict[str, int]:
    """Spec §5 with weights in place of ppm shares (§6a.5): floors of |total| x w / sum(w), the units left one each
    to the largest remainders, ties to the smaller holder (byte order), the sign of the total. Python integers:
    |total| x w passes DuckDB's 128 bits."""
    whole, size = sum(w for _, w in weights), abs(total)
    floors = {holder: size * w // whole for holder, w in weights}
    ranked = sorted(weights, key=lambda hw: (-(size * hw[1] % whole), hw[0].encode()))
    lucky = {holder for holder, _ in ranked[: size - sum(floors.values())]}
    sign = -1 if total < 0 else 1
    return {holder: sign * (floors[holder] + (holder in lucky)) for holder, _ in weights}


def _pass_to_holders(c: duckdb.DuckDBPyConnection, manifest: dict) -> dict[str, str]:
    """Spec v3 §6a and §6b: each `holders:<T>` credit of the epoch is allocated over the published weights of T's
    holders, each holder's part plus the dust it carried in is credited, or carried when strictly between 0 and the
    threshold; the carried amounts that change are `holder_dust.parquet`'s. Replaces those credits in `credit`.
    Returns the holders credited, with their token (to name them)."""
    takes = c.execute("""SELECT recipient, sum(amount)::VARCHAR FROM credit WHERE recipient LIKE 'holders:%'
                         GROUP BY 1 HAVING sum(amount) <> 0 ORDER BY 1""").fetchall()
    section = manifest.get("holders")
    if section is None:
        for recipient, _ in takes:
            (kept,) = c.execute("SELECT count(*) FROM payables WHERE recipient = ?", [recipient]).fetchone()
            if not kept:
                raise AuditDisagreement(f"recipient {recipient}", f"the epoch passed this take on to the token's "
                                        f"holders, but a {manifest['rules_version']} bundle carries no holder weights "
                                        "(only a settlement-v3 bundle can be recomputed for it)")
        return {}
    never = {_zero_address, *(address.lower() for address in section["excluded"])}
    threshold = int(section["dust_units_min"])
    credited: dict[str, str] = {}
    passed = set()
    for recipient, take in takes:
        token = recipient.removeprefix("holders:")
        weights = [(h, int(w)) for h, w in c.execute(
            "SELECT holder, weight FROM holder_weights WHERE token = ? ORDER BY holder", [token]).fetchall()]
        if not weights:
            continue  # no weighted holder: the take stays on holders:<T>, unaddressed (§6a.7)
        for holder, weight in weights:
            if weight <= 0 or holder.lower() in never or holder.lower() == token.lower():
                raise AuditDisagreement(f"holder weight {holder} of {token}", "holder_weights.parquet gives a weight "
                                        "to an excluded address, or a weight that is not positive")
        passed.add(token)
        parts = _largest_remainder_by_weight(int(take), weights)
        carried_in = dict(c.execute("SELECT holder, carried_micros FROM prior_holder_dust WHERE token = ?",
                                    [token]).fetchall())
        published = dict(c.execute("SELECT holder, carried_micros FROM holder_dust WHERE token = ?",
                                   [token]).fetchall())
        c.execute("DELETE FROM credit WHERE recipient = ?", [recipient])
        for holder in sorted(set(parts) | set(carried_in)):
            before = int(carried_in.get(holder, 0))
            accumulated = parts.get(holder, 0) + before
            after = accumulated if 0 < accumulated < threshold else 0
            if published.get(holder, before) != after or (holder in published and after == before):
                raise AuditDisagreement(f"holder dust {holder} of {token}", f"recomputed {after} micros carried "
                                        f"after the epoch; holder_dust.parquet says {published.get(holder)}")
            if accumulated and not after:
                c.execute("INSERT INTO credit VALUES (?, ?::HUGEINT)", [holder, str(accumulated)])
                credited[holder] = token
        extra = set(published) - set(parts) - set(carried_in)
        if extra:
            raise AuditDisagreement(f"holder dust {min(extra)} of {token}", "holder_dust.parquet changes the dust of "
                                    "a holder with neither a part nor dust carried in")
    (stray,) = c.execute("SELECT min(token) FROM holder_dust WHERE token NOT IN "
                         "(SELECT unnest(?::VARCHAR[]))", [sorted(passed)]).fetchone()
    if stray is not None:
        raise AuditDisagreement(f"holder dust of {stray}", "holder_dust.parquet changes dust of a token whose "
                                "holders the epoch did not pay")
    return credited


def _check_payables(c: duckdb.DuckDBPyConnection, holder_recipients: dict[str, str] | None = None) -> None:
    """Spec: earned grows by the credit, the cumulative never decreases, the growth is what becomes payable."""
    c.execute("""CREATE TEMP TABLE recomputed AS
        SELECT recipient, credited, earned, greatest(before, earned) AS cumulative,
               greatest(before, earned) - before AS amount, greatest(before, earned) - earned AS receivable
        FROM (SELECT c.recipient, c.credited, coalesce(p.earned_micros, 0) + c.credited AS earned,
                     coalesce(p.cumulative_micros, 0) AS before
              FROM (SELECT recipient, sum(amount) AS credited FROM credit GROUP BY 1 HAVING sum(amount) <> 0) c
              LEFT JOIN prior_recipients p USING (recipient))""")
    bad = _first(c, """
        SELECT coalesce(r.recipient, b.recipient), r.credited, b.credited_micros, r.amount, b.amount_micros
        FROM recomputed r FULL JOIN payables b USING (recipient)
        WHERE r.recipient IS NULL OR b.recipient IS NULL OR r.credited <> b.credited_micros
           OR r.earned <> b.earned_micros OR r.cumulative <> b.cumulative_micros OR r.amount <> b.amount_micros
           OR r.receivable <> b.receivable_micros
        ORDER BY 1 LIMIT 1""")
    if bad:
        token = (holder_recipients or {}).get(bad[0])
        holder = "" if token is None else (
            f" (a holder of {token}: its part is recomputed from holder_weights.parquet, prior_holder_dust.parquet "
            "and the holders' take)"
        )
        raise AuditDisagreement(
            f"recipient {bad[0]}",
            f"recomputed credit {bad[1]} and payable growth {bad[3]} micros; "
            f"payables.parquet says {bad[2]} and {bad[4]}{holder}",
        )


def _check_suspense(c: duckdb.DuckDBPyConnection) -> None:
    """Spec: carried out = carried in + suspended - released - cancelled, per model; releases are split."""
    bad = _first(c, """
        WITH m AS (SELECT model_id,
                          sum(CASE movement WHEN 'carried_in' THEN fee_micros WHEN 'suspended' THEN fee_micros
                                            WHEN 'released' THEN -fee_micros WHEN 'cancelled' THEN -fee_micros
                                            ELSE 0 END) AS expected,
                          sum(CASE WHEN movement = 'carried_out' THEN fee_micros ELSE 0 END) AS published,
                          sum(CASE WHEN movement = 'released' THEN fee_micros ELSE 0 END) AS released
                   FROM suspense GROUP BY 1),
             g AS (SELECT model_id, sum(fee_micros) AS released FROM groups WHERE kind = 'released' GROUP BY 1)
        SELECT coalesce(m.model_id, g.model_id) FROM m FULL JOIN g USING (model_id)
        WHERE coalesce(m.expected, 0) <> coalesce(m.published, 0) OR coalesce(m.released, 0) <> coalesce(g.released, 0)
        ORDER BY 1 LIMIT 1""")
    if bad:
        raise AuditDisagreement(f"suspense of model {bad[0]}", "carried out is not carried in plus suspended less "
                                "released and cancelled, or the released fees are not the released groups'")
    bad = _first(c, """
        WITH r AS (SELECT model_id, sum(fee_micros) AS fee FROM reversals WHERE outcome = 'taken_back' GROUP BY 1),
             g AS (SELECT model_id, sum(fee_micros) AS fee FROM groups WHERE kind = 'reversal' GROUP BY 1)
        SELECT coalesce(r.model_id, g.model_id) FROM r FULL JOIN g USING (model_id)
        WHERE r.fee IS DISTINCT FROM g.fee ORDER BY 1 LIMIT 1""")
    if bad:
        raise AuditDisagreement(f"reversals of model {bad[0]}", "the fees taken back are not the reversal groups'")


def _leaves(c: duckdb.DuckDBPyConnection, manifest: dict) -> dict[str, int]:
    """Spec: growth goes to the address in force at the epoch's close, with what waited for an address."""
    rows = c.execute("""
        WITH growth AS (
            SELECT lower(b.payout_address) AS address, b.amount_micros + coalesce(p.unaddressed_micros, 0) AS units
            FROM payables b LEFT JOIN prior_recipients p USING (recipient) WHERE b.payout_address IS NOT NULL
            UNION ALL SELECT lower(address), units FROM prior_leaves)
        SELECT address, sum(units)::HUGEINT FROM growth GROUP BY 1 HAVING sum(units) > 0 ORDER BY 1""").fetchall()
    leaves = {Web3.to_checksum_address(a): int(u) for a, u in rows}
    published = {
        Web3.to_checksum_address(a): int(u) for a, u in c.execute("SELECT address, units FROM leaves").fetchall()
    }
    for address in sorted(set(leaves) | set(published), key=str.lower):
        if leaves.get(address) != published.get(address):
            raise AuditDisagreement(
                f"leaf {address}",
                f"recomputed {leaves.get(address)} units; leaves.parquet says {published.get(address)}",
            )
    (unaddressed,) = c.execute("""
        SELECT coalesce(sum(CASE WHEN b.payout_address IS NULL THEN b.amount_micros ELSE 0 END), 0)
             + coalesce((SELECT sum(unaddressed_micros) FROM prior_recipients p WHERE p.recipient NOT IN
                         (SELECT recipient FROM payables WHERE payout_address IS NOT NULL)), 0)
        FROM payables b""").fetchone()
    if int(unaddressed) != manifest.get("unaddressed_units"):
        raise AuditDisagreement("manifest.json", f"unaddressed units recompute to {unaddressed}, "
                                f"not the manifest's {manifest.get('unaddressed_units')}")
    return leaves


def audit_bundle(directory: Path, rpc_url: str | None = None, distributor: str | None = None) -> AuditResult:
    """Check the bundle at `directory`; with `rpc_url` and `distributor`, that the chain holds its root.

    Raises `AuditDisagreement` naming the first disagreement."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    with duckdb.connect() as c:
        for stem in _stems(manifest):
            path = str(directory / f"{stem}.parquet").replace("'", "''")
            c.execute(f"CREATE TEMP TABLE {stem} AS SELECT * FROM read_parquet('{path}')")
        _check_registry(c)
        _check_suspense(c)
        if rpc_url is not None:  # with a chain, the holders' weights are checked against it before they are used
            _check_holder_weights_on_chain(c, manifest, rpc_url)
        _credits(c)
        holder_recipients = _pass_to_holders(c, manifest)
        _check_payables(c, holder_recipients)
        leaves = _leaves(c, manifest)
        _check_events_commitment(c, manifest)
        (groups,) = c.execute("SELECT count(*) FROM groups").fetchone()
    root = MerkleTree.from_amounts(leaves).root_hex if leaves else None
    if root != manifest.get("root"):
        raise AuditDisagreement(
            "manifest.json", f"the leaves give root {root}, not the manifest's {manifest.get('root')}"
        )
    digest = _committed_digest(manifest, leaves)
    if rpc_url is not None:
        _check_chain(manifest, digest, rpc_url, distributor)
    return AuditResult(
        int(manifest["epoch"]), root, len(leaves), int(groups), rpc_url is not None, manifest["rules_version"], digest
    )


def _group_rows(c: duckdb.DuckDBPyConnection) -> list[tuple]:
    """The groups in the spec's order: (kind, model_id, pool_id, compute_provider) by UTF-8 bytes, then hour."""
    rows = c.execute("""SELECT kind, model_id, pool_id, compute_provider, epoch_us(hour), events_root, fee_micros,
                               events FROM groups""").fetchall()
    return sorted(rows, key=lambda r: (r[0].encode(), r[1].encode(), r[2].encode(), r[3].encode(), r[4]))


def _check_events_commitment(c: duckdb.DuckDBPyConnection, manifest: dict) -> None:
    """The manifest's event commitment is the sum tree over the groups' event roots, and sums the groups' fees."""
    committed = manifest.get("events")
    if committed is None:
        return
    rows = _group_rows(c)
    if any(row[5] is None for row in rows):
        raise AuditDisagreement("groups.parquet", "a group has no events_root, but the manifest commits to them")
    hashes = [bytes.fromhex(row[5].removeprefix("0x")) for row in rows]
    top = sum_tree.root_of(hashes, [int(row[6]) for row in rows]) if rows else None
    recomputed = {
        "root": "0x" + top.hash.hex() if top else None,
        "fee_micros": top.fee_micros if top else 0,
        "events": sum(int(row[7]) for row in rows),
        "groups": len(rows),
    }
    if recomputed != committed:
        raise AuditDisagreement("manifest.json", f"the groups' event roots give event commitment {recomputed}, "
                                f"not the manifest's {committed}")


def verify_receipt(directory: Path, receipt: dict, audited: AuditResult | None = None) -> str:
    """Check a payer's receipt (`royalty receipt`) against the bundle at `directory`, which must audit clean
    (`audited`: its audit, when already run): its proof leads from the event to its group's `events_root` and to
    the group's fee sum. Returns a statement."""
    audited = audited or audit_bundle(directory)
    if "events" not in read_manifest(directory):
        raise AuditDisagreement("receipt", "this bundle commits to no event roots (published with payer_receipts "
                                "off), so no receipt can be checked against it")
    group, event = receipt.get("group", {}), receipt.get("event", {})
    if receipt.get("epoch") != audited.epoch:
        raise AuditDisagreement("receipt", f"it is of epoch {receipt.get('epoch')}, the bundle of {audited.epoch}")
    try:
        hour_us = int(datetime.fromisoformat(str(group["hour"]).replace("Z", "+00:00")).timestamp() * 1_000_000)
        start = sum_tree.leaf(str(event["source"]), str(event["event_id"]), int(event["fee_micros"]))
        top = sum_tree.fold(start, receipt["proof"])
    except (KeyError, TypeError, ValueError) as error:
        raise AuditDisagreement("receipt", f"it is not a receipt `royalty receipt` writes ({error})") from None
    with duckdb.connect() as c:
        path = str(Path(directory) / "groups.parquet").replace("'", "''")
        c.execute(f"CREATE TEMP TABLE groups AS SELECT * FROM read_parquet('{path}')")
        row = c.execute(
            """SELECT events_root, fee_micros FROM groups WHERE kind = ? AND model_id = ? AND pool_id = ?
               AND compute_provider = ? AND epoch_us(hour) = ?""",
            [receipt.get("kind"), group.get("model_id"), group.get("pool_id"), group.get("compute_provider"), hour_us],
        ).fetchone()
    label = f"receipt of {event.get('source')}/{event.get('event_id')}"
    if row is None:
        raise AuditDisagreement(label, "the bundle has no such group")
    root, fee_micros = row
    if "0x" + top.hash.hex() != root or top.fee_micros != int(fee_micros):
        raise AuditDisagreement(label, f"its proof leads to root {'0x' + top.hash.hex()} summing {top.fee_micros} "
                                f"micros, not the group's {root} summing {fee_micros}")
    return (f"event {event['source']}/{event['event_id']} ({event['fee_micros']} micros) is counted in epoch "
            f"{audited.epoch}'s group {group['model_id']} / {group['compute_provider']} / {group['hour']} "
            f"({fee_micros} micros), and the bundle audits clean")


def _committed_digest(manifest: dict, leaves: dict[str, int]) -> str:
    """The ledger digest the root commits to: settlement-v2, the manifest's own SHA-256; settlement-v1, the SHA-256
    of the epoch, its closing snapshot and the leaves (spec §11), which must be the one the manifest repeats."""
    if manifest["rules_version"] != "settlement-v1":
        return manifest["_sha256"]
    text = f"royalty-engine/settlement/v1\n{manifest['epoch']}\n{manifest['closing_snapshot']}\n" + "".join(
        f"{address.lower()},{units}\n" for address, units in sorted(leaves.items(), key=lambda item: item[0].lower())
    )
    digest = "0x" + hashlib.sha256(text.encode()).hexdigest()
    if digest != manifest.get("ledger_digest"):
        raise AuditDisagreement("manifest.json", f"the leaves give settlement-v1 digest {digest}, not the manifest's "
                                f"{manifest.get('ledger_digest')}")
    return digest


def _check_holder_weights_on_chain(c: duckdb.DuckDBPyConnection, manifest: dict, rpc_url: str) -> None:
    """Spec v1 §6a.3 from the chain: each token's `Transfer` logs from its deployment block to the range's end give
    every holder's time-weighted balance over `from_block..to_block`, without the zero address, the token and the
    excluded addresses; they must be `holder_weights.parquet`'s, holder by holder."""
    section = manifest.get("holders")
    if section is None:
        return
    from settlement.onchain.chain import connect
    from settlement.onchain.chain_logs import deployment_block, read_logs
    from settlement.onchain.contract_artifacts import token_artifact

    chain = connect(rpc_url, None)
    if chain.chain_id != int(section["chain_id"]):
        raise AuditDisagreement("chain", f"the node is chain {chain.chain_id}; the holders' weights are of chain "
                                f"{section['chain_id']}")
    first, last = int(section["from_block"]), int(section["to_block"])
    never = sorted({_zero_address, *(address.lower() for address in section["excluded"])})
    for (token,) in c.execute("SELECT DISTINCT token FROM holder_weights ORDER BY 1").fetchall():
        contract = chain.w3.eth.contract(address=Web3.to_checksum_address(token), abi=token_artifact().abi)
        logs = read_logs(chain, contract.events.Transfer, deployment_block(chain, contract.address), last)
        rows = [(log["args"][side], int(log["blockNumber"]), str(sign * int(log["args"]["value"])))
                for log in logs for side, sign in (("to", 1), ("from", -1))]
        c.execute("CREATE OR REPLACE TEMP TABLE chain_deltas (holder VARCHAR, block BIGINT, delta VARCHAR)")
        if rows:
            c.executemany("INSERT INTO chain_deltas VALUES (?, ?, ?)", rows)
        bad = c.execute(
            """WITH onchain AS (
                   SELECT holder, sum(delta::HUGEINT * ($last - greatest(block, $first) + 1)) AS weight
                   FROM chain_deltas
                   WHERE lower(holder) NOT IN (SELECT unnest($never::VARCHAR[])) AND lower(holder) <> lower($token)
                   GROUP BY holder HAVING sum(delta::HUGEINT * ($last - greatest(block, $first) + 1)) > 0),
               published AS (SELECT holder, weight::HUGEINT AS weight FROM holder_weights WHERE token = $token)
               SELECT coalesce(o.holder, p.holder), o.weight::VARCHAR, p.weight::VARCHAR
               FROM onchain o FULL JOIN published p ON o.holder = p.holder
               WHERE o.weight IS DISTINCT FROM p.weight ORDER BY 1 LIMIT 1""",
            {"first": first, "last": last, "never": never, "token": token},
        ).fetchone()
        if bad:
            raise AuditDisagreement(f"holder weight {bad[0]} of {token}", f"the chain's Transfer logs give "
                                    f"{bad[1]} over blocks {first}..{last}; holder_weights.parquet says {bad[2]}")


def _check_chain(manifest: dict, digest_committed: str, rpc_url: str, distributor: str | None) -> None:
    """A RootProposed of the epoch on the distributor carries the recomputed root and the digest it commits to."""
    from settlement.onchain.chain import connect, distributor_contract
    from settlement.onchain.chain_logs import log_start_block, read_logs

    if distributor is None:
        raise AuditDisagreement("--distributor", "checking the chain needs the distributor's address")
    chain = connect(rpc_url, None)
    contract = distributor_contract(chain, distributor)
    logs = read_logs(chain, contract.events.RootProposed, log_start_block(chain, contract, None),
                     chain.w3.eth.block_number, {"epoch": int(manifest["epoch"])})
    proposed = [("0x" + bytes(log["args"]["root"]).hex(), "0x" + bytes(log["args"]["ledgerDigest"]).hex())
                for log in logs]
    if not proposed:
        raise AuditDisagreement("chain", f"no root proposed for epoch {manifest['epoch']} at {contract.address}")
    root, digest = proposed[-1]
    if root != manifest["root"]:
        raise AuditDisagreement("chain", f"the distributor's root for epoch {manifest['epoch']} is {root}, "
                                f"the bundle's {manifest['root']}")
    if digest != digest_committed:
        what = "the manifest's" if manifest["rules_version"] == "settlement-v1" else "manifest.json's SHA-256"
        raise AuditDisagreement("chain", f"the distributor's ledger digest for epoch {manifest['epoch']} is {digest}, "
                                f"not {what} {digest_committed}: this manifest is not the one the root committed to")
