"""`royalty publish` and `royalty audit`: an epoch's bundle, and its independent recomputation (issue 18).

`publish` only reads the ledger (through the SELECT-only role when one is configured); `audit` reads only the
bundle (and, with `--rpc-url`, the distributor's logs). docs/spec/settlement-v1.md and settlement-v2.md are the
rules both follow.
"""

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from royalty.common import (
    ConfigOption,
    DataPathOption,
    LakeOption,
    load_settings,
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
    from ledger import Ledger
    from settlement.use_cases.publish_epoch import publish_epoch

    require_output_folder(to, "--to")
    settings = load_settings({"lake": lake, "data_path": data_path}, config)
    try:
        with Ledger.open_read_only(settings.reader_lake or settings.lake, settings.data_path) as ledger:
            summary = publish_epoch(ledger, epoch, to, registry_rules(settings))
    except RoyaltyError as error:
        _fail(error)
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
        str | None, typer.Option("--rpc-url", help="EVM JSON-RPC URL: also check the distributor's root.")
    ] = None,
    distributor: Annotated[
        str | None, typer.Option("--distributor", help="RoyaltyDistributor address (with --rpc-url).")
    ] = None,
) -> None:
    """Recompute an epoch's leaves and root from its bundle alone; exit 1 naming the first disagreement."""
    from settlement.use_cases.audit_bundle import AuditDisagreement, audit_bundle

    if (rpc_url is None) != (distributor is None):
        _fail(RoyaltyError("--rpc-url and --distributor go together: give both to check the chain, or neither"), 2)
    try:
        result = audit_bundle(bundle, rpc_url, distributor)
    except AuditDisagreement as error:
        stderr.print(f"[bold red]disagrees:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except RoyaltyError as error:
        _fail(error)
    stdout.print(result.statement(), highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add `publish` and `audit` to the `royalty` app."""
    app.command("publish")(publish)
    app.command("audit")(audit)
