"""`royalty publish`, `royalty audit` and `royalty receipt`: an epoch's bundle, its independent recomputation, and
a payer's proof that an event was counted (issue 18).

`publish` only reads the ledger (through the SELECT-only role when one is configured); `audit` reads only the
bundle (and, with `--rpc-url`, the distributor's and holder tokens' logs). docs/spec/settlement-v1.md to -v3.md
are the rules both follow.
"""

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from royalty.common import (
    ConfigOption,
    DataPathOption,
    LakeOption,
    load_settings,
    reading_ledger,
    registry_rules,
    require_output_folder,
    stderr,
    stdout,
)
from royalty.common import fail as _fail
from schemas.errors import RoyaltyError


def publish(
    epoch: Annotated[int, typer.Option("--epoch", help="A closed epoch.")],
    to: Annotated[Path, typer.Option("--to", help="Folder to write the bundle (Parquet files, manifest.json) into.")],
    lake: LakeOption = None,
    data_path: DataPathOption = None,
    config: ConfigOption = None,
) -> None:
    """Write a closed epoch's inputs as Parquet with manifest.json, for anyone to recompute its root."""
    from settlement.use_cases.publish_epoch import publish_epoch

    require_output_folder(to, "--to")
    settings = load_settings({"lake": lake, "data_path": data_path}, config)
    summary = reading_ledger(
        settings, lambda ledger: publish_epoch(ledger, epoch, to, registry_rules(settings), settings.payer_receipts)
    )
    committed = (
        f"ledger digest {summary.ledger_digest} ({summary.rules_version})"
        if summary.ledger_digest
        else f"not settled yet: `royalty settle` proposes this manifest's SHA-256 ({summary.rules_version})"
    )
    stdout.print(
        f"epoch {summary.epoch}: {summary.groups:,} allocation groups, {summary.leaves:,} leaves, root "
        f"{summary.root} -> {summary.directory} (manifest.json sha256 {summary.manifest_sha256}; {committed}); "
        f"check it with `royalty audit --bundle {summary.directory}`",
        highlight=False,
        soft_wrap=True,
    )


def audit(
    bundle: Annotated[Path, typer.Option("--bundle", help="A folder `royalty publish` wrote.")],
    rpc_url: Annotated[
        str | None,
        typer.Option("--rpc-url", help="EVM JSON-RPC URL: also check the distributor's root and holders' weights."),
    ] = None,
    distributor: Annotated[
        str | None, typer.Option("--distributor", help="RoyaltyDistributor address (with --rpc-url).")
    ] = None,
    receipt: Annotated[
        Path | None, typer.Option("--receipt", help="A payer's receipt (`royalty receipt --out`) to check too.")
    ] = None,
) -> None:
    """Recompute an epoch's leaves and root from its bundle alone; exit 1 naming the first disagreement."""
    from settlement.use_cases.audit_bundle import AuditDisagreement, audit_bundle, verify_receipt

    if (rpc_url is None) != (distributor is None):
        _fail(RoyaltyError("--rpc-url and --distributor go together: give both to check the chain, or neither"), 2)
    body = _read_receipt(receipt) if receipt is not None else None
    try:
        result = audit_bundle(bundle, rpc_url, distributor)
        statement = result.statement() if body is None else verify_receipt(bundle, body, result)
    except AuditDisagreement as error:
        stderr.print(f"[bold red]disagrees:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except RoyaltyError as error:
        _fail(error)
    stdout.print(statement, highlight=False, soft_wrap=True)


def _read_receipt(path: Path) -> dict:
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        _fail(RoyaltyError(f"--receipt {path}: not a readable JSON receipt ({type(error).__name__}); write one with "
                           "`royalty receipt --source S --event-id ID --out FILE`"), 2)
    if not isinstance(body, dict):
        _fail(RoyaltyError(f"--receipt {path}: a receipt is one JSON object, as `royalty receipt --out` writes"), 2)
    return body


def receipt(
    source: Annotated[str, typer.Option("--source", help="The metered event's CloudEvents source.")],
    event_id: Annotated[str, typer.Option("--event-id", help="The metered event's CloudEvents id.")],
    out: Annotated[Path | None, typer.Option("--out", help="Write the receipt (JSON) to this file.")] = None,
    output_json: Annotated[bool, typer.Option("--json", help="Print the receipt as JSON instead of text.")] = False,
    lake: LakeOption = None,
    data_path: DataPathOption = None,
    config: ConfigOption = None,
) -> None:
    """A payer's proof that one metered event was counted in its settled epoch's published fee sums."""
    from settlement.use_cases.payer_receipt import payer_receipt

    settings = load_settings({"lake": lake, "data_path": data_path}, config)
    made = reading_ledger(settings, lambda ledger: payer_receipt(ledger, source, event_id, registry_rules(settings)))
    text = json.dumps(made.body, indent=1, sort_keys=True)
    if out is not None:
        out.write_text(text + "\n", encoding="utf-8")
    if output_json:
        stdout.print(json.dumps(made.body, sort_keys=True), highlight=False, soft_wrap=True, markup=False)
        return
    written = f"; written to {out}" if out is not None else ""
    stdout.print(
        f"{made.summary}{written}; check it with `royalty audit --bundle DIR --receipt FILE` against the epoch's "
        f"bundle (`royalty publish --epoch {made.body['epoch']} --to DIR`)",
        highlight=False, soft_wrap=True, markup=False,
    )


def register(app: typer.Typer) -> None:
    """Add `publish`, `audit` and `receipt` to the `royalty` app."""
    app.command("publish")(publish)
    app.command("audit")(audit)
    app.command("receipt")(receipt)
