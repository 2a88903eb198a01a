"""An epoch's bundle: the inputs of its payout tree as Parquet, and a manifest (docs/spec/settlement-v1.md).

`publish_epoch` re-reads the closed epoch's inputs with the settlement's own readers (`settlement.ledger_io`:
the state the earlier epochs left, the registry in force, the epoch's events and reversals), plans the epoch
again with the engine, and refuses unless that plan gives exactly the payables the epoch wrote. It then writes
what the spec's rules take as inputs, aggregated (no payer, event or request id): the allocation groups per
hour, the pools and policies in force, the reversals and suspense movements, the recipients' state before the
epoch, the previous and the new cumulative leaves. `settlement.reports.audit` recomputes the leaves and the
root from these files alone, with its own SQL.

Rules versions (docs/spec/): under `settlement-v2` the ledger digest proposed on-chain is the SHA-256 of the
epoch's `manifest.json`, so the root commits to its published inputs. `settle` composes that manifest when it
writes the epoch's tree (`epoch_manifest`) and the ledger keeps it verbatim (`settlement_manifest`); `publish`
writes those exact bytes. An epoch whose tree was written before (no stored manifest) stays `settlement-v1`: its
manifest repeats the leaf digest it proposed, which is never recomputed under the new rules. An epoch that
weighted token holders (it recorded a holders' block range) is `settlement-v3`: its bundle adds the holders'
time-weighted balances, the exclusions and the dust carried in and out (`holder_files`, manifest `holders`), so the
audit recomputes the holders' parts too; one settled under settlement-v2 keeps its manifest without them.
"""

import dataclasses
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl

from ledger import recorder
from ledger.attach import closing_snapshot
from ledger.ledger import Ledger
from schemas.errors import require
from settlement import chain_registry
from settlement.engine import reversals as rev
from settlement.engine.accounts import holders_prefix
from settlement.engine.authority import RegistryRules, arrival_columns
from settlement.engine.constants import amount_micros_max
from settlement.engine.epochs import (
    EpochInputs,
    EpochPlan,
    PriorState,
    _merge_resolutions,
    classify_reversals,
    plan_epoch,
)
from settlement.engine.holders import dust_schema
from settlement.engine.policies import Resolution, resolve
from settlement.engine.splits import event_columns, event_key, key_separator, route
from settlement.exceptions import SettlementError
from settlement.ledger_io import (
    read_inputs,
    read_prior,
    read_registry,
    recorded_epoch_blocks,
    recorded_holder_weights,
)
from settlement.onchain.merkle import MerkleTree
from settlement.onchain.payout_tree import address_leaves, ledger_digest
from settlement.onchain.settle import read_stored_manifest, read_stored_tree
from settlement.reports import sum_tree

rules_version_v1 = "settlement-v1"  # ledger digest: sha256 of the leaves (payout_tree.ledger_digest)
rules_version = "settlement-v2"  # ledger digest: sha256 of manifest.json
# settlement-v2 plus token holders' weights and dust in the bundle: an epoch that recorded a holders' block range.
rules_version_v3 = "settlement-v3"
manifest_name = "manifest.json"
# The files of a bundle, in the order the audit checks them.
bundle_files = (
    "groups.parquet",
    "pools.parquet",
    "pool_shares.parquet",
    "policies.parquet",
    "models.parquet",
    "reversals.parquet",
    "suspense.parquet",
    "prior_recipients.parquet",
    "prior_leaves.parquet",
    "payables.parquet",
    "leaves.parquet",
)
# The files a settlement-v3 bundle adds (an epoch that weighted token holders), after those above.
holder_files = ("holder_weights.parquet", "prior_holder_dust.parquet", "holder_dust.parquet")
_hour = pl.Datetime("us", "UTC")


class BundleError(SettlementError):
    """The ledger's epoch cannot be published as it was closed."""


@dataclass(frozen=True)
class PublishSummary:
    epoch: int
    directory: str
    groups: int
    leaves: int
    root: str | None
    manifest_sha256: str
    rules_version: str = rules_version
    ledger_digest: str | None = None  # the digest settled on-chain with the root; None before settle wrote it


@dataclass(frozen=True)
class EpochBundle:
    """A closed epoch's bundle before it is written: its files, the payable rows of epochs up to it, the
    previous and the closing snapshot, and the registry block (on-chain mode)."""

    epoch: int
    frames: dict[str, pl.DataFrame]
    stored: pl.DataFrame
    snapshots: tuple[int, int]
    registry_block: dict | None
    holders: dict | None = None  # the holders' block range, exclusions and dust threshold (settlement-v3)


def publish_epoch(
    ledger: Ledger, epoch: int, directory: Path, rules: RegistryRules | None = None, receipts: bool = True
) -> PublishSummary:
    """Write epoch `epoch`'s bundle into `directory` (created; files there of the same names replaced).

    The manifest is the one the settled root committed to: the stored one (settlement-v2), or for an epoch
    settled under settlement-v1 one naming that version and its leaf digest. Refuses when the files written now
    are not those the stored manifest names. `receipts` (the deployment's `payer_receipts`) applies to an epoch not
    settled yet; a settled one follows its stored manifest."""
    directory = Path(directory)
    settled, committed = ledger.recorder.read(
        lambda connection: (read_stored_tree(connection, epoch), read_stored_manifest(connection, epoch)),
        f"read epoch {epoch}'s tree and manifest",
    )
    # A manifest stored without an event commitment was composed without the groups' sum-tree roots.
    has_events = receipts if committed is None else b'"events"' in committed
    # An epoch that paid holders but was settled under settlement-v2 committed to no holder files: none written.
    has_holders = committed is None or b'"holders"' in committed
    bundle = read_epoch_bundle(ledger, epoch, rules, receipts=has_events, with_holders=has_holders)
    if committed is not None:
        digest = "0x" + hashlib.sha256(committed).hexdigest()
        if settled is None or settled.ledger_digest != digest:
            raise BundleError(f"epoch {epoch}: the stored manifest's SHA-256 {digest} is not the digest settled "
                              f"with its root ({settled.ledger_digest if settled else 'no tree'})")
        return write_bundle(directory, **_bundle_args(bundle), committed=committed)
    if settled is None:  # not settled yet: the manifest `settle` will commit to
        return write_bundle(directory, **_bundle_args(bundle))
    summary = write_bundle(directory, **_bundle_args(bundle), version=rules_version_v1)
    if summary.ledger_digest != settled.ledger_digest:
        raise BundleError(f"epoch {epoch}: the leaves give digest {summary.ledger_digest}, not the one settled "
                          f"({settled.ledger_digest})")
    return summary


def epoch_manifest(ledger: Ledger, epoch: int, rules: RegistryRules | None = None, receipts: bool = True) -> bytes:
    """The `manifest.json` of closed epoch `epoch` under the current rules: what `settle` stores with the epoch's
    tree and proposes the SHA-256 of (the files themselves are not written). `receipts`: with the event
    commitment."""
    return compose_bundle(**_bundle_args(read_epoch_bundle(ledger, epoch, rules, receipts)))[0]


def _bundle_args(bundle: EpochBundle) -> dict:
    return {"frames": bundle.frames, "stored": bundle.stored, "epoch": bundle.epoch, "snapshots": bundle.snapshots,
            "registry_block": bundle.registry_block, "holders": bundle.holders}


def read_epoch_bundle(
    ledger: Ledger, epoch: int, rules: RegistryRules | None = None, receipts: bool = True, with_holders: bool = True
) -> EpochBundle:
    """Plan closed epoch `epoch` again from the ledger and check it gives the payables (and root) it wrote.
    An epoch that recorded a holders' block range is re-planned with the weights, exclusions and dust threshold it
    recorded; `with_holders` puts them in the bundle (settlement-v3)."""
    rules = rules or RegistryRules()
    closing = closing_snapshot(ledger, epoch)  # raises when the epoch is not closed
    prior, inputs, registry_block, weights, blocks, stored, settled = ledger.recorder.read(
        lambda connection: _stored_epoch(connection, epoch, closing, rules), f"read epoch {epoch}'s inputs"
    )
    dust_units_min = 0 if blocks is None else blocks["dust_units_min"]
    inputs = EpochInputs(**{**inputs.__dict__, "holder_weights": weights, "holder_dust_units_min": dust_units_min})
    plan = plan_epoch(inputs, prior)
    payables = stored.filter(pl.col("epoch") == epoch).drop("epoch")
    compared = ["recipient", "credited_micros", "amount_micros", "cumulative_micros", "payout_address"]
    if not plan.payables.select(compared).equals(payables.select(compared)):
        raise BundleError(
            f"epoch {epoch} does not recompute from the ledger to the payables it wrote: publish with the registry "
            "settings (registry_sources, reversal_sources, policy_notice_s) the epoch was closed with"
        )
    frames = bundle_frames(inputs, prior, plan, stored, epoch, receipts, keep_events=False)
    if blocks is not None and with_holders:
        frames.update(holder_frames(inputs, prior, plan))
    leaves, _ = address_leaves(stored)
    if settled is not None and (not leaves or settled.root_hex != MerkleTree.from_amounts(leaves).root_hex):
        raise BundleError(f"epoch {epoch}: the payables give another root than the one settled ({settled.root_hex})")
    frames.pop("events", None)
    holders = blocks if with_holders else None
    return EpochBundle(epoch, frames, stored, (prior.closing_snapshot, closing), registry_block, holders)


def receipt_events(ledger: Ledger, epoch: int, model_id: str, rules: RegistryRules | None = None) -> pl.DataFrame:
    """The new and released events of model `model_id` that closed epoch `epoch` split, each routed to its group
    (what a payer receipt proves from): the epoch's inputs read as publish reads them and `_groups`' routing,
    on that model's events only (routing is per model). The epoch is not planned again: a receipt that the
    engine would not give fails `royalty audit --receipt` against the published bundle."""
    rules = rules or RegistryRules()
    closing = closing_snapshot(ledger, epoch)  # raises when the epoch is not closed
    prior, inputs, *_ = ledger.recorder.read(
        lambda connection: _stored_epoch(connection, epoch, closing, rules), f"read epoch {epoch}'s inputs"
    )
    reversals = classify_reversals(inputs, prior)
    of_model = pl.col("model_id") == model_id
    inputs = EpochInputs(**{**inputs.__dict__, "new_events": inputs.new_events.filter(of_model)})
    prior = dataclasses.replace(prior, held=prior.held.filter(of_model))
    events = _groups(inputs, prior, reversals, receipts=True, keep_events=True)["events"]
    return events  # type: ignore[return-value]


def _stored_epoch(connection: duckdb.DuckDBPyConnection, epoch: int, closing: int, rules: RegistryRules) -> tuple:
    """What closed epoch `epoch` read and wrote, as of one snapshot: (prior state, inputs, registry block, holder
    weights, holder blocks, stored payables up to the epoch, stored tree)."""
    prior = read_prior(connection, before_epoch=epoch)
    require(prior.epoch == epoch - 1, f"epochs before {epoch} are all closed")
    inputs, registry_block = _epoch_inputs(connection, prior, closing, rules)
    weights = recorded_holder_weights(connection, epoch, inputs.policies)
    blocks = recorded_epoch_blocks(connection, epoch)
    stored = recorder.frame(
        connection,
        f"SELECT * FROM {recorder.table('settlement_payable')} WHERE epoch <= ? ORDER BY epoch, recipient",
        [epoch],
    )
    return prior, inputs, registry_block, weights, blocks, stored, read_stored_tree(connection, epoch)


def compose_bundle(
    frames: dict[str, pl.DataFrame],
    stored: pl.DataFrame,
    epoch: int,
    snapshots: tuple[int, int],
    registry_block: dict | None = None,
    version: str = rules_version,
    holders: dict | None = None,
) -> tuple[bytes, dict[str, bytes]]:
    """The manifest's bytes and each file's Parquet bytes. `stored` are the payable rows of epochs up to
    `epoch`, `snapshots` the previous and the closing snapshot. Under settlement-v1 the manifest repeats the
    leaf digest (`ledger_digest`); under settlement-v2 its own SHA-256 is the digest, so it holds none. With
    `holders` (the epoch's recorded block range, exclusions and dust threshold) and the holder files in `frames`,
    the bundle is settlement-v3."""
    require(version in (rules_version_v1, rules_version), f"rules version {version} is one this code writes")
    if holders is not None and version == rules_version:
        version = rules_version_v3
    leaves, unaddressed_units = address_leaves(stored)
    tree = MerkleTree.from_amounts(leaves) if leaves else None
    contents, files = {}, {}
    for name in bundle_files + (holder_files if version == rules_version_v3 else ()):
        buffer = io.BytesIO()
        frames[name].write_parquet(buffer, compression="zstd", statistics=False)
        contents[name] = buffer.getvalue()
        files[name] = {"sha256": hashlib.sha256(contents[name]).hexdigest(), "rows": frames[name].height}
    manifest = {
        "rules_version": version,
        "epoch": epoch,
        "previous_snapshot": snapshots[0],
        "closing_snapshot": snapshots[1],
        "registry": registry_block,
        "files": files,
        "root": tree.root_hex if tree else None,
        "leaf_count": len(leaves),
        "total_units": sum(leaves.values()),
        "unaddressed_units": unaddressed_units,
    }
    if version == rules_version_v1:
        manifest["ledger_digest"] = ledger_digest(epoch, snapshots[1], leaves)
    if version == rules_version_v3:
        manifest["holders"] = holders
    commitment = events_commitment(frames["groups.parquet"])
    if commitment is not None:
        manifest["events"] = commitment
    return (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode(), contents


def write_bundle(
    directory: Path,
    frames: dict[str, pl.DataFrame],
    stored: pl.DataFrame,
    epoch: int,
    snapshots: tuple[int, int],
    registry_block: dict | None = None,
    committed: bytes | None = None,
    version: str = rules_version,
    holders: dict | None = None,
) -> PublishSummary:
    """Write `frames` (`bundle_frames`) and the manifest into `directory` (`compose_bundle`). With `committed`
    (the manifest a settled root committed to) those bytes are written, after checking every file is the one
    it names."""
    body, contents = compose_bundle(frames, stored, epoch, snapshots, registry_block, version, holders)
    if committed is not None:
        named = json.loads(committed)["files"]
        for name, content in contents.items():
            actual = hashlib.sha256(content).hexdigest()
            if named.get(name, {}).get("sha256") != actual:
                raise BundleError(
                    f"epoch {epoch}: {name} written now has SHA-256 {actual}, not the one its settled manifest "
                    f"names ({named.get(name, {}).get('sha256')}); the epoch's inputs or the Parquet writer "
                    "changed since it was settled: publish with the version that settled it"
                )
        body = committed
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in contents.items():
        (directory / name).write_bytes(content)
    (directory / manifest_name).write_bytes(body)
    manifest = json.loads(body)
    digest = manifest.get("ledger_digest") if manifest["rules_version"] == rules_version_v1 else (
        "0x" + hashlib.sha256(body).hexdigest() if committed is not None else None
    )
    return PublishSummary(
        epoch, str(directory), frames["groups.parquet"].height, int(manifest["leaf_count"]), manifest["root"],
        hashlib.sha256(body).hexdigest(), manifest["rules_version"], digest,
    )


def _epoch_inputs(
    connection: duckdb.DuckDBPyConnection, prior: PriorState, closing: int, rules: RegistryRules
) -> tuple[EpochInputs, dict | None]:
    """The epoch's inputs as `close_epoch` read them: the operator registry judged by `rules`, or (an epoch
    closed in on-chain mode) the registry contract's state as of the block the epoch recorded."""
    epoch = prior.epoch + 1
    row = None
    if chain_registry.epoch_registry_table in recorder.existing_tables(connection):
        row = connection.execute(
            f"SELECT chain_id, contract, block_number, block_hash FROM "
            f"{recorder.table(chain_registry.epoch_registry_table)} WHERE epoch = ?",
            [epoch],
        ).fetchone()
    if row is None:
        registry = read_registry(connection, prior, closing, rules)
        return read_inputs(connection, prior, closing, registry, rules.reversal_sources), None
    source = chain_registry.RegistrySource(int(row[0]), str(row[1]))
    records = chain_registry.registry_records(chain_registry.registry_events(connection, source, int(row[2])))
    from settlement.engine.authority import Judgment

    judgment = Judgment(records.models, records.policies, records.addresses, [], [])
    inputs = read_inputs(connection, prior, closing, judgment, rules.reversal_sources)
    providers = inputs.new_events.select(pl.col("compute_provider").unique()).collect()["compute_provider"]
    accounts = [*providers.to_list(), *prior.held["compute_provider"].to_list()]
    addresses = chain_registry.with_own_addresses(inputs.addresses, accounts)
    inputs = EpochInputs(**{**inputs.__dict__, "addresses": addresses})
    block = {"chain_id": int(row[0]), "contract": str(row[1]), "block_number": int(row[2]), "block_hash": str(row[3])}
    return inputs, block


group_keys = ["kind", "model_id", "pool_id", "compute_provider", "compute_share_ppm", "hour"]


def _hourly(
    events: pl.LazyFrame, resolution: Resolution, kind: str, receipts: bool = True, keep_events: bool = True
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame | None]:
    """The engine's routing (`splits.route`) per hour: the hour rides in the provider key, which routing never
    reads; the groups come back with `hour` apart, and the events whose route is incomplete. With `receipts` each
    event comes back routed (`_hourly_by_event`): the groups then carry the root of the sum tree over their events
    (`events_root`, `sum_tree`), and the routed events are returned with `keep_events` (else None)."""
    if receipts:
        return _hourly_by_event(events, resolution, kind, keep_events)
    hour_text = pl.col("event_time").dt.truncate("1h").dt.strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
    keyed = events.with_columns(
        compute_provider=pl.concat_str(["compute_provider", hour_text], separator=key_separator)
    )
    routed = route(keyed, resolution)
    parts = pl.col("compute_provider").str.split_exact(key_separator, 1)
    rows = routed.groups.with_columns(
        kind=pl.lit(kind),
        compute_provider=parts.struct.field("field_0"),
        hour=parts.struct.field("field_1").str.to_datetime("%Y-%m-%dT%H:%M:%S%.6fZ", time_zone="UTC"),
    )
    incomplete = routed.incomplete.with_columns(
        compute_provider=pl.col("compute_provider").str.split(key_separator).list.first()
    )
    return rows, incomplete, None


# With receipts every event is routed on its own: the events are taken about this many at a time, all of a model's
# in one batch (routing is per model), so memory holds one batch's events and routed rows, not the epoch's.
receipt_batch_events = 8_000_000


def _hourly_by_event(
    events: pl.LazyFrame, resolution: Resolution, kind: str, keep_events: bool
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame | None]:
    """`_hourly` with receipts, in batches of models (`receipt_batch_events`)."""
    count = int(events.select(pl.len()).collect().item())
    batches = max(1, -(-count // receipt_batch_events))
    parts = [
        _route_each_event(
            events if batches == 1 else events.filter(pl.col("model_id").hash(seed=0) % batches == batch),
            resolution, kind, keep_events,
        )
        for batch in range(batches)
    ]
    groups, incomplete = pl.concat([p[0] for p in parts]), pl.concat([p[1] for p in parts])
    return groups, incomplete, pl.concat([p[2] for p in parts]) if keep_events else None  # type: ignore[misc]


def _route_each_event(
    events: pl.LazyFrame, resolution: Resolution, kind: str, keep_events: bool
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame | None]:
    """Each event's row number rides in the provider key (routing groups by an integer, one group per event);
    its provider, hour, source and id are gathered back by that number after routing. The groups with the root
    of their events' sum tree, the incomplete events, and the routed events (with `keep_events`)."""
    table = events.with_columns(hour=pl.col("event_time").dt.truncate("1h")).collect().with_row_index("_event_row")
    names = events.collect_schema().names()
    keyed = table.lazy().with_columns(compute_provider=pl.col("_event_row")).select(names)
    routed = route(keyed, resolution)
    row = routed.groups["compute_provider"]
    rows = routed.groups.with_columns(
        kind=pl.lit(kind),
        compute_provider=table["compute_provider"].gather(row),
        hour=table["hour"].gather(row),
        source=table["source"].gather(row),
        event_id=table["event_id"].gather(row),
    )
    incomplete = routed.incomplete.with_columns(
        compute_provider=table["compute_provider"].gather(routed.incomplete["compute_provider"])
    )
    del table, keyed, routed
    groups = rows.group_by(group_keys).agg(pl.col("events").sum(), pl.col("fee_micros").sum())
    groups = groups.join(_events_roots(rows), on=group_keys, how="left", nulls_equal=True)
    return groups, incomplete, rows if keep_events else None


def group_leaves(rows: pl.DataFrame) -> list[tuple[str, str, int]]:
    """One group's (source, event_id, fee_micros) in the sum tree's order: (source, event id) by UTF-8 bytes."""
    triples = [(s, e, int(f)) for s, e, f in rows.select("source", "event_id", "fee_micros").iter_rows()]
    return sorted(triples, key=lambda t: (t[0].encode(), t[1].encode()))


def _events_roots(rows: pl.DataFrame) -> pl.DataFrame:
    """Per group, the root of the sum tree over its events (one pass over the rows sorted by group, then by
    (source, event id): polars orders strings by their UTF-8 bytes)."""
    ordered = rows.sort([*group_keys, "source", "event_id"])
    group_ids = ordered.select(pl.struct(group_keys).rle_id().alias("_group"))["_group"]
    starts = [0, *(group_ids.diff().fill_null(0) != 0).arg_true().to_list(), ordered.height] if ordered.height else [0]
    roots = sum_tree.group_roots(ordered["source"], ordered["event_id"], ordered["fee_micros"], starts)
    return ordered[starts[:-1]].select(group_keys).with_columns(
        events_root=pl.Series(["0x" + h.hex() for h in roots], dtype=pl.String)
    )


def events_commitment(groups: pl.DataFrame) -> dict | None:
    """The manifest's event commitment: the sum tree over the groups' roots in groups.parquet order (each group
    root taken as a node with its fee sum); its sum is the epoch's routed fees. None without receipts."""
    if "events_root" not in groups.columns:
        return None
    if not groups.height:
        return {"root": None, "fee_micros": 0, "events": 0, "groups": 0}
    hashes = groups["events_root"].str.strip_prefix("0x").str.decode("hex").to_list()
    top = sum_tree.root_of(hashes, groups["fee_micros"].to_list())
    return {"root": "0x" + top.hash.hex(), "fee_micros": top.fee_micros, "events": int(groups["events"].sum()),
            "groups": groups.height}


def _groups(
    inputs: EpochInputs, prior: PriorState, reversals: pl.DataFrame, receipts: bool = True, keep_events: bool = True
) -> dict[str, pl.DataFrame]:
    """The allocation groups (new, released and taken-back fees), the suspense moves and the resolutions used:
    the routing of `epochs._route`, per hour; with `receipts` and `keep_events` the routed new and released events
    too (`events`)."""
    closing = inputs.closing_snapshot
    valid = reversals.filter(pl.col("outcome") != rev.dead_letter)
    cancelled = valid.filter(pl.col("outcome") == rev.cancelled).select(
        event_key("original_source", "original_event_id")
    )["event_key"].implode()
    resolutions = {closing: resolve(inputs.models, inputs.policies, closing)}
    new, suspended, new_rows = _hourly(
        inputs.new_events.filter(~event_key().is_in(cancelled)), resolutions[closing], "new", receipts, keep_events
    )
    held = prior.held.filter(~event_key().is_in(cancelled))
    released_groups, still, released_rows = _hourly(
        held.select(event_columns).lazy(), resolutions[closing], "released", receipts, keep_events
    )
    still_keys = still.select(event_key())["event_key"].implode()
    parts = [new, released_groups]
    taken = valid.filter(pl.col("outcome") == rev.taken_back)
    for snapshot in sorted(set(taken["settled_snapshot"].to_list())):
        resolutions.setdefault(snapshot, resolve(inputs.models, inputs.policies, snapshot))
        rows = taken.filter(pl.col("settled_snapshot") == snapshot).select(event_columns).lazy()
        parts.append(_hourly(rows, resolutions[snapshot], "reversal", receipts, keep_events=False)[0])
    routed_events = pl.concat([new_rows, released_rows]) if receipts and keep_events else None  # type: ignore[list-item]
    groups = pl.concat(parts).select(*group_keys, "events", "fee_micros", *(["events_root"] if receipts else []))
    moves = {
        "carried_in": prior.held,
        "suspended": suspended,
        "released": held.filter(~event_key().is_in(still_keys)),
        "cancelled": prior.held.filter(event_key().is_in(cancelled)),
    }
    return {"groups": groups, **moves, "resolution": _merge_resolutions(list(resolutions.values())),
            "events": routed_events}


def _reachable(resolution: Resolution, pools: set[str]) -> set[str]:
    edges = resolution.pool_shares.filter(pl.col("target_pool_id").is_not_null())
    targets: dict[str, set[str]] = {}
    for pool_id, target in edges.select("pool_id", "target_pool_id").iter_rows():
        targets.setdefault(pool_id, set()).add(target)
    seen, stack = set(pools), list(pools)
    while stack:
        for target in targets.get(stack.pop(), ()):
            if target not in seen:
                seen.add(target)
                stack.append(target)
    return seen


def _int64(frame: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    for column in columns:
        largest = frame[column].cast(pl.Int128).abs().max() if frame.height else 0
        require(int(largest or 0) <= amount_micros_max, f"{column} fits a Parquet int64")
    return frame.with_columns(pl.col(columns).cast(pl.Int64))


def bundle_frames(
    inputs: EpochInputs,
    prior: PriorState,
    plan: EpochPlan,
    stored: pl.DataFrame,
    epoch: int,
    receipts: bool = True,
    keep_events: bool = True,
) -> dict[str, pl.DataFrame]:
    """The bundle's files of `epoch`, from its inputs, the state before it, its plan and the payable rows of
    epochs up to it (`stored`: epoch, recipient, the payable columns, payout_address); with `receipts` and
    `keep_events` also `events`, the routed events (not a file)."""
    routed = _groups(inputs, prior, plan.reversals, receipts, keep_events)
    groups = routed["groups"].sort("kind", "model_id", "pool_id", "compute_provider", "hour")
    groups = _int64(groups, ["fee_micros"])
    resolution: Resolution = routed["resolution"]
    used = _reachable(resolution, set(groups["pool_id"].to_list()))
    pools = resolution.pools.filter(pl.col("pool_id").is_in(list(used))).sort("pool_id")
    shares = resolution.pool_shares.filter(pl.col("pool_id").is_in(list(used))).sort("pool_id", "recipient")
    records = pools["model_id"].unique().to_list()
    # Every accepted policy of the pools' records known at the close (not only those in use), so the audit can
    # check that no later one was in force at a group's hour.
    policies = (
        inputs.policies.filter(pl.col("model_id").is_in(records), pl.col("known_snapshot") <= inputs.closing_snapshot)
        .unique("event_id")
        .select(
            pl.col("event_id").alias("policy_id"), "model_id", "effective_from", "event_time", "compute_share_ppm",
            pl.col("shares").list.eval(pl.element().sort_by(pl.element().struct.field("recipient"))),
            "known_snapshot",
        )
        .sort("policy_id")
    )
    order = [c for c in arrival_columns if c in inputs.models.columns]
    models = (
        inputs.models.filter(pl.col("known_snapshot") <= inputs.closing_snapshot)
        .sort(order).unique("model_id", keep="first", maintain_order=True)  # the registration in force
        .filter(pl.col("model_id").is_in(records))
        .select("model_id", pl.col("parents").list.eval(pl.element().sort_by(pl.element().struct.field("model_id"))))
        .sort("model_id")
    )
    moves = [
        routed[name].group_by("model_id").agg(pl.len().cast(pl.Int64).alias("events"), pl.col("fee_micros").sum())
        .with_columns(movement=pl.lit(name))
        for name in ("carried_in", "suspended", "released", "cancelled")
    ]
    suspense = pl.concat([m.select("movement", "model_id", "events", "fee_micros") for m in moves])
    out = (
        pl.concat([m.select("model_id", "events", "fee_micros") for m in (moves[0], moves[1])])
        .vstack(pl.concat([m.select("model_id", "events", "fee_micros") for m in (moves[2], moves[3])])
                .with_columns(-pl.col("events"), -pl.col("fee_micros")))
        .group_by("model_id").agg(pl.col("events").sum(), pl.col("fee_micros").sum())
        .filter(pl.col("events") != 0).with_columns(movement=pl.lit("carried_out"))
    )
    suspense = _int64(pl.concat([suspense, out.select(suspense.columns)]).sort("movement", "model_id"), ["fee_micros"])
    reversals = (
        plan.reversals.group_by("outcome", "model_id")
        .agg(pl.len().cast(pl.Int64).alias("events"), pl.col("fee_micros").sum())
        .sort("outcome", "model_id", nulls_last=True)
    )
    before = stored.filter(pl.col("epoch") < epoch)
    prior_leaves, _ = address_leaves(before)
    pending = (
        before.sort("recipient", "epoch")
        .with_columns(later=pl.col("payout_address").fill_null(strategy="backward").over("recipient"))
        .filter(pl.col("later").is_null())
        .group_by("recipient").agg(pl.col("amount_micros").sum().alias("unaddressed_micros"))
    )
    prior_recipients = (
        prior.payables.join(pending, on="recipient", how="left")
        .with_columns(pl.col("unaddressed_micros").fill_null(0))
        .sort("recipient")
    )
    leaves, _ = address_leaves(stored)
    payables = stored.filter(pl.col("epoch") == epoch).select(
        "recipient", "credited_micros", "amount_micros", "earned_micros", "cumulative_micros", "receivable_micros",
        "payout_address",
    )
    return {
        "groups.parquet": groups,
        "pools.parquet": pools,
        "pool_shares.parquet": shares,
        "policies.parquet": policies,
        "models.parquet": models,
        "reversals.parquet": reversals,
        "suspense.parquet": suspense,
        "prior_recipients.parquet": prior_recipients,
        "prior_leaves.parquet": _leaf_frame(prior_leaves),
        "payables.parquet": payables,
        "leaves.parquet": _leaf_frame(leaves),
        **({"events": routed["events"]} if receipts and keep_events else {}),  # not a file: a receipt proves from
    }


def holder_frames(inputs: EpochInputs, prior: PriorState, plan: EpochPlan) -> dict[str, pl.DataFrame]:
    """The settlement-v3 files of an epoch that weighted token holders, for the tokens whose holders' take it
    passed on (its `holders` entries): each holder's time-weighted balance (`weight`, decimal text: it can pass
    int64), the dust the holders carried in, and the holders' dust rows the epoch changed."""
    entries = plan.postings.filter(pl.col("entry_kind") == "holders")["entry_id"].unique().to_list()
    tokens = sorted({entry.split(":", 1)[1].removeprefix(holders_prefix) for entry in entries})
    source = inputs.holder_weights
    weights = (source(tokens) if callable(source) else source or {}) if tokens else {}
    rows = [(token, holder, str(weight)) for token in tokens for holder, weight in weights.get(token, [])]
    weight_frame = pl.DataFrame(rows, schema={"token": pl.String, "holder": pl.String, "weight": pl.String},
                                orient="row").sort("token", "holder")
    carried_in = prior.holder_dust.filter(pl.col("token").is_in(tokens)).select(list(dust_schema)).sort(
        "token", "holder"
    )
    return {
        "holder_weights.parquet": weight_frame,
        "prior_holder_dust.parquet": carried_in.cast(dust_schema),  # type: ignore[arg-type]
        "holder_dust.parquet": plan.holder_dust.select(list(dust_schema)).cast(dust_schema).sort(  # type: ignore[arg-type]
            "token", "holder"
        ),
    }


def _leaf_frame(leaves: dict[str, int]) -> pl.DataFrame:
    return pl.DataFrame(
        {"address": list(leaves), "units": list(leaves.values())}, schema={"address": pl.String, "units": pl.Int64}
    ).sort(pl.col("address").str.to_lowercase())
