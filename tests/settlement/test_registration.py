"""The settlement declares its tables and views with the ledger explicitly (`register_with_ledger`), never as a side
effect of importing one of its modules; every `royalty` command declares them before it opens a ledger, so
`royalty verify` and `royalty backup` check the settlement's inlined tables whatever the command imported."""

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from ledger import Ledger
from tests.conftest import repo_root, royalty_command

_import_everything = """
import importlib, json, pkgutil, sys
import ledger.query, ledger.tables
own_tables = set(ledger.tables.all_tables)
import settlement
names = sorted(m.name for m in pkgutil.walk_packages(settlement.__path__, "settlement."))
for name in names:
    importlib.import_module(name)
import royalty.cli, royalty.demo
imported_tables = sorted(set(ledger.tables.all_tables) - own_tables)
imported_views = list(ledger.query._registered_views)
from settlement.use_cases.ledger_setup import register_with_ledger
register_with_ledger()
register_with_ledger()
print(json.dumps({
    "modules": len(names),
    "imported_tables": imported_tables,
    "imported_views": imported_views,
    "declared_tables": sorted(set(ledger.tables.all_tables) - own_tables),
    "declared_views": list(ledger.query._registered_views),
}))
"""


def test_importing_every_settlement_module_declares_nothing() -> None:
    """A fresh interpreter imports every settlement module (and the CLI, the demo): no table, no view is declared;
    `register_with_ledger` then declares them all, views in one order, and again changes nothing."""
    import json

    result = subprocess.run(
        [sys.executable, "-c", _import_everything], capture_output=True, text=True, cwd=repo_root, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.splitlines()[-1])
    assert found["modules"] > 40
    assert found["imported_tables"] == [] and found["imported_views"] == []
    assert {"settlement_epoch", "holder_transfer", "registry_event", "settlement_root"} <= set(
        found["declared_tables"]
    )
    assert found["declared_views"] == ["settlement", "settlement.holders", "settlement.onchain"]


def _forge_registry_sync_row(lake: Path) -> None:
    """A row written into the settlement's inlined `registry_sync` table on the catalog directly (no digest)."""
    with Ledger.open(lake) as ledger:  # creates the settlement's tables (declared for the session by conftest)
        at = datetime(2026, 1, 1, tzinfo=UTC)
        ledger.connection.execute(
            "INSERT INTO lake.main.registry_sync VALUES (1, '0xforged', 0, 99, '0xhash', ?, 0, ?)", [at, at]
        )


def test_verify_and_backup_commands_check_the_settlements_inlined_tables(tmp_path: Path) -> None:
    """`royalty verify` and `royalty backup`, each a fresh process importing no settlement module for its work, name a
    row forged into a settlement table (on the old code neither declared the settlement's tables: both passed)."""
    lake = tmp_path / "lake"
    _forge_registry_sync_row(lake)
    verified = subprocess.run(royalty_command("verify", "--lake", str(lake)), capture_output=True, text=True)
    said = " ".join((verified.stdout + verified.stderr).split())
    assert verified.returncode == 1, said
    assert "inlined table `registry_sync` was changed in the catalog" in said and "0xforged" in said
    backed_up = subprocess.run(
        royalty_command("backup", "--lake", str(lake), "--to", str(tmp_path / "copy")), capture_output=True, text=True
    )
    said = " ".join((backed_up.stdout + backed_up.stderr).split())
    assert backed_up.returncode != 0 and "does not verify" in said and "registry_sync" in said, said
