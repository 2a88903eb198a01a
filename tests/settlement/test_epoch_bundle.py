"""Issue 18: `royalty publish` writes an epoch's bundle and `royalty audit` recomputes its leaves and root from it.

One ledger (module-scoped) closes two epochs covering lineage, a policy change mid-epoch, a reversal taken
back and one cancelled, fees held in suspense then released, and a payout address change; both bundles audit
clean, and each tamper kind is named by the audit (a fee sum, a policy share, a leaf, a file without its hash).
"""

import json
import os
import shutil
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner
from web3 import Web3

from ingest.sample import _envelope, metered_source
from ledger import Ledger
from royalty.cli import app
from settlement import close_epoch
from settlement.engine.authority import RegistryRules
from settlement.reports import bundle as bundle_module
from settlement.reports.audit import AuditDisagreement, audit_bundle, verify_receipt
from settlement.reports.bundle import BundleError, bundle_frames, publish_epoch, write_bundle
from settlement.reports.receipts import payer_receipt, receipt_from
from tests.settlement.split_world import run_epochs, worlds
from tests.support.ledger_batches import append_in_batches, sample_messages, shape

registry_source = "//registry.example"
new_payout = Web3.to_checksum_address("0x" + "ab" * 20)
billing_source = "//billing.example"
rules = RegistryRules(reversal_sources=(billing_source,))


def _metered(event_id: str, model_id: str, seconds: float, fee_micros: int) -> bytes:
    data = {
        "model_id": model_id, "request_id": f"req-{event_id}", "payer": "org-00001", "compute_provider": "gpu-001",
        "input_tokens": 10, "output_tokens": 10, "fee_micros": fee_micros, "asset": shape.asset,
    }
    time = shape.start + timedelta(seconds=seconds)
    return _envelope("ai.inference.metered.v1", event_id, time, data, metered_source)


def _registry(event_type: str, event_id: str, data: dict) -> bytes:
    return _envelope(event_type, event_id, shape.start - timedelta(hours=1), data, registry_source)


def _reversal(event_id: str, original: str) -> bytes:
    data = {"original_event_id": original, "reason": "refund", "original_source": metered_source}
    return _envelope("ai.inference.reversed.v1", event_id, shape.start + timedelta(seconds=40), data, billing_source)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("bundle")
    values = sample_messages(120)
    registry, metered = values[:-120], values[-120:]
    policy_change = _registry(  # model-0000 has no parents; its new policy applies from 10 s into the epoch
        "ai.split-policy.set.v1",
        "pol-change",
        {
            "model_id": "model-0000",
            "effective_from": (shape.start + timedelta(seconds=10)).isoformat().replace("+00:00", "Z"),
            "compute_share_ppm": 150_000,
            "shares": [{"recipient": "contrib-00000", "share_ppm": 700_001}, {"recipient": "contrib-00011",
                                                                              "share_ppm": 299_999}],
        },
    )
    around_change = [_metered("m0-before", "model-0000", 5, 5_000), _metered("m0-after", "model-0000", 15, 7_000)]
    late_model = [_metered(f"late-{i}", "model-late", 2 + i, 1_000 + i) for i in range(3)]
    derived_late = [
        _registry(
            "ai.model.registered.v1",
            "reg-late",
            {"model_id": "model-late", "parents": [{"model_id": "model-0000", "share_ppm": 100_000}]},
        ),
        _registry(
            "ai.split-policy.set.v1",
            "pol-late",
            {
                "model_id": "model-late",
                "effective_from": (shape.start - timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
                "compute_share_ppm": 100_000,
                "shares": [{"recipient": "model:model-0000", "share_ppm": 100_000},
                           {"recipient": "contrib-00003", "share_ppm": 900_000}],
            },
        ),
    ]
    new_address = _registry(
        "ai.contributor.registered.v1",
        "addr-change",
        {"contributor_id": "contrib-00000", "payout_address": new_payout},
    )
    first_id = json.loads(metered[0])["id"]
    last_id = json.loads(metered[-1])["id"]
    with Ledger.open(root / "lake") as ledger:
        first_batch = [*registry, policy_change, *metered[:80], *around_change, *late_model]
        offset = append_in_batches(ledger, first_batch, 0, 500)
        assert close_epoch(ledger, rules=rules).suspended_micros == 3_003
        offset = append_in_batches(
            ledger, [*derived_late, new_address, *metered[80:], _reversal("rev-1", first_id)], offset, 500
        )
        append_in_batches(ledger, [_reversal("rev-2", last_id)], offset, 10)
        second = close_epoch(ledger, rules=rules)
        assert (second.released_micros, second.reversal_count, second.dead_letter_count) == (3_003, 2, 0)
        published = {epoch: root / f"epoch-{epoch}" for epoch in (1, 2)}
        for epoch, directory in published.items():
            publish_epoch(ledger, epoch, directory, rules)
        with pytest.raises(BundleError, match="registry settings"):  # closed with reversal sources: say so
            publish_epoch(ledger, 2, root / "wrong-rules", RegistryRules())
    return published


def test_a_multi_epoch_bundle_audits_clean_and_covers_the_scenario(bundles):
    """Both epochs recompute; the bundle holds the policy change, the release, the reversals and the new address."""
    for epoch, directory in bundles.items():
        result = audit_bundle(directory)
        manifest = json.loads((directory / "manifest.json").read_text())
        assert (result.epoch, result.root, manifest["rules_version"]) == (epoch, manifest["root"], "settlement-v2")
    first, second = (bundles[e] for e in (1, 2))
    pools = pl.read_parquet(first / "pools.parquet")
    assert pools.filter(pl.col("model_id") == "model-0000")["policy_id"].n_unique() == 2  # changed mid-epoch
    suspense = pl.read_parquet(first / "suspense.parquet")
    assert suspense.filter(pl.col("movement") == "carried_out")["fee_micros"].sum() == 3_003
    groups = pl.read_parquet(second / "groups.parquet")
    assert set(groups["kind"]) == {"new", "released", "reversal"}
    assert "payer" not in groups.columns and "event_id" not in groups.columns
    outcomes = set(pl.read_parquet(second / "reversals.parquet")["outcome"])
    assert outcomes == {"taken_back", "cancelled"}
    payables = pl.read_parquet(second / "payables.parquet")
    assert payables.filter(pl.col("recipient") == "contrib-00000")["payout_address"].item() == new_payout
    assert (second / "manifest.json").read_text().count('"sha256"') == 11


def _tampered(source: Path, target: Path, name: str, change, rehash: bool = True) -> Path:
    shutil.copytree(source, target)
    frame = change(pl.read_parquet(target / name))
    frame.write_parquet(target / name)
    if rehash:
        import hashlib

        manifest = json.loads((target / "manifest.json").read_text())
        manifest["files"][name]["sha256"] = hashlib.sha256((target / name).read_bytes()).hexdigest()
        (target / "manifest.json").write_text(json.dumps(manifest))
    return target


def _first_row_plus(column: str, delta: int):
    return lambda f: f.with_columns(
        pl.when(pl.int_range(pl.len()) == 0).then(pl.col(column) + delta).otherwise(pl.col(column)).alias(column)
    )


def _one_policy_share_moved(frame: pl.DataFrame) -> pl.DataFrame:
    """One ppm moved between the first two recipients of the first policy with two: the sum stays 1,000,000."""
    index = next(i for i, s in enumerate(frame["shares"].to_list()) if len(s) > 1)
    shares = frame["shares"].to_list()
    shares[index][0]["share_ppm"] += 1
    shares[index][1]["share_ppm"] -= 1
    return frame.with_columns(pl.Series("shares", shares, dtype=frame.schema["shares"]))


def _policy_change_backdated(frame: pl.DataFrame) -> pl.DataFrame:
    """The mid-epoch policy made effective before the hour: the groups of the older policy no longer fit."""
    earlier = shape.start - timedelta(minutes=30)
    when = pl.col("policy_id") == "pol-change"
    return frame.with_columns(pl.when(when).then(pl.lit(earlier)).otherwise(pl.col("effective_from"))
                              .cast(frame.schema["effective_from"]).alias("effective_from"))


@pytest.mark.parametrize(
    ("name", "change", "rehash", "named"),
    [
        ("groups.parquet", _first_row_plus("fee_micros", 1_000), True, "recipient "),
        ("policies.parquet", _one_policy_share_moved, True, "pool "),
        ("policies.parquet", _policy_change_backdated, True, "group ("),
        ("leaves.parquet", _first_row_plus("units", 1), True, "leaf 0x"),
        ("groups.parquet", _first_row_plus("fee_micros", 1), False, "groups.parquet"),
    ],
    ids=["fee-sum", "policy-share", "policy-time", "leaf", "file-without-hash"],
)
def test_each_tamper_kind_is_named(bundles, tmp_path, name, change, rehash, named):
    """A changed fee sum, policy share, policy time or leaf (with the manifest's hash updated) and a file changed
    without its hash: the audit names the first disagreeing recipient, pool, group, leaf or file."""
    tampered = _tampered(bundles[2], tmp_path / "b", name, change, rehash)
    with pytest.raises(AuditDisagreement) as caught:
        audit_bundle(tampered)
    assert caught.value.what.startswith(named), str(caught.value)


def test_royalty_audit_exits_0_with_a_statement_or_1_naming_the_disagreement(bundles, tmp_path):
    runner = CliRunner()
    clean = runner.invoke(app, ["audit", "--bundle", str(bundles[2])])
    assert clean.exit_code == 0 and "recompute to" in clean.output, clean.output
    tampered = _tampered(bundles[2], tmp_path / "b", "leaves.parquet", _first_row_plus("units", 1), rehash=False)
    bad = runner.invoke(app, ["audit", "--bundle", str(tampered)])
    assert bad.exit_code == 1 and "leaves.parquet" in bad.output, bad.output
    missing = runner.invoke(app, ["audit", "--bundle", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "no manifest.json" in missing.output, missing.output


def _receipt(lake: Path, event_id: str, out: Path) -> object:
    return CliRunner().invoke(
        app, ["receipt", "--lake", str(lake), "--source", metered_source, "--event-id", event_id, "--out", str(out)],
        env={"ROYALTY_REVERSAL_SOURCES": billing_source},  # the rules the epochs were closed with
    )


def test_a_payer_receipt_verifies_against_its_bundle_and_a_changed_amount_fails(bundles, tmp_path):
    """`royalty receipt` proves an event counted in its group's published fee sum (one split in its epoch, one
    released from suspense a later epoch); `royalty audit --receipt` checks it from the bundle alone, and refuses
    a changed amount, another epoch's bundle, and an event no epoch split (cancelled by a reversal)."""
    runner, lake = CliRunner(), bundles[1].parent / "lake"
    for event_id, epoch, kind in (("m0-after", 1, "new"), ("late-1", 2, "released")):
        path = tmp_path / f"{event_id}.json"
        made = _receipt(lake, event_id, path)
        assert made.exit_code == 0, made.output
        receipt = json.loads(path.read_text())
        assert (receipt["epoch"], receipt["kind"], receipt["event"]["event_id"]) == (epoch, kind, event_id)
        assert "payer" not in path.read_text() and "org-00001" not in path.read_text()
        checked = runner.invoke(app, ["audit", "--bundle", str(bundles[epoch]), "--receipt", str(path)])
        assert checked.exit_code == 0 and f"{event_id} (" in checked.output, checked.output
        other = runner.invoke(app, ["audit", "--bundle", str(bundles[3 - epoch]), "--receipt", str(path)])
        assert other.exit_code == 1 and "receipt: it is of epoch" in other.output, other.output
    receipt["event"]["fee_micros"] += 1
    path.write_text(json.dumps(receipt))
    changed = runner.invoke(app, ["audit", "--bundle", str(bundles[2]), "--receipt", str(path)])
    assert changed.exit_code == 1 and "receipt of" in changed.output and "its proof leads to" in changed.output
    cancelled = _receipt(lake, json.loads(sample_messages(120)[-1])["id"], tmp_path / "none.json")
    assert cancelled.exit_code != 0 and "was not split by any closed epoch" in cancelled.output, cancelled.output
    unknown = _receipt(lake, "no-such-event", tmp_path / "none.json")
    assert unknown.exit_code != 0 and "no metered event" in unknown.output, unknown.output


def test_payer_receipts_off_publish_no_event_commitment_and_receipts_are_refused(bundles, tmp_path):
    """`payer_receipts = false` (per deployment): the bundle has no group roots nor event commitment, still audits
    clean, and a receipt checked against it is refused by name."""
    with Ledger.open_read_only(bundles[1].parent / "lake") as ledger:
        publish_epoch(ledger, 1, tmp_path / "off", rules, receipts=False)
        receipt = payer_receipt(ledger, metered_source, "m0-after", rules).body
    assert "events" not in json.loads((tmp_path / "off" / "manifest.json").read_text())
    assert "events_root" not in pl.read_parquet(tmp_path / "off" / "groups.parquet").columns
    assert audit_bundle(tmp_path / "off").root == audit_bundle(bundles[1]).root
    assert verify_receipt(bundles[1], receipt).startswith("event ")
    with pytest.raises(AuditDisagreement, match="commits to no event roots"):
        verify_receipt(tmp_path / "off", receipt)


def test_the_event_commitment_sums_the_groups_and_is_checked(bundles, tmp_path):
    """The manifest commits to the groups' event roots; a group root edited (file rehashed) is named."""
    manifest = json.loads((bundles[2] / "manifest.json").read_text())
    groups = pl.read_parquet(bundles[2] / "groups.parquet")
    assert (manifest["events"]["fee_micros"], manifest["events"]["groups"]) == (groups["fee_micros"].sum(), len(groups))
    flipped = _tampered(bundles[2], tmp_path / "g", "groups.parquet",
                        lambda f: f.with_columns(events_root=pl.col("events_root").reverse()))
    with pytest.raises(AuditDisagreement, match="event commitment"):
        audit_bundle(flipped)


# 12 examples in CI (a few seconds); ROYALTY_NIGHTLY=1 runs 150.
@settings(
    max_examples=150 if os.environ.get("ROYALTY_NIGHTLY") == "1" else 12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(world=st.booleans().flatmap(lambda datasets: worlds(epochs_max=3, with_datasets=datasets)))
def test_the_audit_recomputes_every_generated_epoch_the_engine_closed(world, tmp_path_factory):
    """Property: on generated registries and traffic (lineage, datasets in the DAG in about half the worlds,
    policy changes, suspense, reversals taken back and cancelled, addresses or none), every epoch's bundle audits
    clean: the audit's SQL, written from the spec, gives the engine's payables, leaves and root. Every payer's
    receipt verifies, a changed amount does not, and the sum at the event commitment's root is the epoch's fees."""
    root = tmp_path_factory.mktemp("world")
    stored: list[pl.DataFrame] = []

    def publish(inputs, prior, plan) -> None:
        stored.append(plan.payables)
        rows = pl.concat(stored)
        frames = bundle_frames(inputs, prior, plan, rows, plan.epoch)
        directory = root / f"epoch-{plan.epoch}"
        write_bundle(directory, frames, rows, plan.epoch, (prior.closing_snapshot, plan.closing_snapshot))
        audited = audit_bundle(directory)
        assert audited.epoch == plan.epoch
        # Payer receipts: the event commitment sums to the fees the epoch credits (new + released - taken back),
        # every routed event's receipt verifies from the bundle alone, and one with a changed amount does not.
        events = frames["events"]
        commitment = json.loads((directory / "manifest.json").read_text())["events"]
        assert commitment["fee_micros"] == int(plan.payables["credited_micros"].sum() or 0)
        for row in events.iter_rows(named=True):
            body = receipt_from(plan.epoch, events, row).body
            assert verify_receipt(directory, body, audited).startswith(f"event {row['source']}/{row['event_id']}")
        if events.height:
            body["event"]["fee_micros"] += 1
            with pytest.raises(AuditDisagreement, match="its proof leads to"):
                verify_receipt(directory, body, audited)

    run_epochs(world, each=publish)


def test_receipts_routed_in_model_batches_give_the_same_bundle_and_receipts(bundles, monkeypatch):
    """With receipts the events are routed a batch of models at a time (`receipt_batch_events`, 8M events in
    production): batches of a few events give the same manifest bytes (group roots, event commitment) and the same
    receipt as one batch."""
    with Ledger.open_read_only(bundles[1].parent / "lake") as ledger:
        whole = payer_receipt(ledger, metered_source, "late-1", rules).body
        monkeypatch.setattr(bundle_module, "receipt_batch_events", 7)
        for epoch, directory in bundles.items():
            assert bundle_module.epoch_manifest(ledger, epoch, rules) == (directory / "manifest.json").read_bytes()
        assert payer_receipt(ledger, metered_source, "late-1", rules).body == whole
