"""`royalty claims-page`: the static page contributors claim from with their own wallet (no server, no key here)."""

import json
from pathlib import Path
from typing import Annotated

import typer

from royalty.common import ConfigOption, DataPathOption, LakeOption, load_settings, stdout
from royalty.common import fail as _fail
from schemas.errors import RoyaltyError


def claims_page(
    to: Annotated[Path, typer.Option("--to", help="Folder to write the page into (created if missing).")],
    lake: LakeOption = None,
    data_path: DataPathOption = None,
    config: ConfigOption = None,
    epoch: Annotated[
        int | None,
        typer.Option("--epoch", help="Newest epoch the page holds; unset: the newest recorded on-chain.", min=1),
    ] = None,
    distributor: Annotated[
        str | None,
        typer.Option("--distributor", help="Distributor the page claims from; unset: the newest recorded one."),
    ] = None,
    output_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")] = False,
) -> None:
    """Write the contributor claim page: open DIR/index.html with a wallet to see and claim what you earned.

    The page holds the newest recorded epoch's payout tree and the one before it (claimable while the newest
    waits out its timelock); it checks the proof against the distributor's active root in the browser.
    """
    from ledger import Ledger
    from settlement.use_cases.claims_page import check_page_directory, claims_page_from_ledger

    settings = load_settings({"lake": lake, "data_path": data_path, "distributor": distributor}, config)
    try:
        check_page_directory(to)
        with Ledger.open_read_only(settings.reader_lake or settings.lake, settings.data_path) as ledger:
            page = claims_page_from_ledger(ledger, to, epoch, settings.distributor)
    except RoyaltyError as error:
        _fail(error)
    if output_json:
        stdout.file.write(json.dumps({**vars(page), "index": str(Path(page.directory) / "index.html")}) + "\n")
        stdout.file.flush()
        return
    epochs = ", ".join(str(e) for e in page.epochs)
    stdout.print(
        f"claim page of epoch(s) {epochs} ({page.leaves:,} payees) on chain {page.chain_id}, distributor "
        f"{page.distributor} -> {Path(page.directory) / 'index.html'}",
        highlight=False,
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    """Add `claims-page` to the `royalty` app."""
    app.command("claims-page")(claims_page)
