"""`royalty --help` and every subcommand's `--help` import none of the heavy modules (issue 21: 1.7 s, 1.58 s of
it importing the decoder). A structural check, not a timed one: the start-up time itself is measured by
`benchmarks/cli_startup.py` (figures in benchmarks/RESULTS.md).
"""

import json
import subprocess
import sys

from tests.conftest import royalty_command

# What a command imports when it runs, never for its help: the decoder and models (pydantic models, eth-utils),
# Arrow, polars, DuckDB, web3, Kafka.
# The settings too (pydantic-settings): `royalty.common.load_settings` imports them on first call. Not pydantic
# itself: typer's own type adapters import it for a subcommand's help.
heavy = (
    "polars",
    "duckdb",
    "web3",
    "pyarrow",
    "eth_utils",
    "kafka",
    "msgspec",
    "schemas.decoder",
    "schemas.events",
    "pydantic_settings",
)

_every_help = """
import json, sys
import typer.main
from royalty.cli import app

heavy = {heavy!r}

def paths(command, prefix):
    yield prefix
    for name, sub in getattr(command, "commands", {{}}).items():
        yield from paths(sub, [*prefix, name])

group = typer.main.get_command(app)
loaded = {{}}
for path in paths(group, []):
    try:
        group.main([*path, "--help"], prog_name="royalty", standalone_mode=False)
    except SystemExit:
        pass
    loaded[" ".join(path) or "royalty"] = sorted(m for m in sys.modules if m in heavy or m.split(".")[0] in heavy)
sys.stderr.write(json.dumps(loaded))
"""


def test_royalty_help_imports_no_heavy_module() -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", *royalty_command("--help")[1:]], capture_output=True, text=True
    )
    assert result.returncode == 0 and "close-epoch" in result.stdout
    imported = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if line.startswith("import time")}
    assert imported and not sorted(m for m in imported if m in heavy or m.split(".")[0] in heavy)


def test_every_subcommand_help_imports_no_heavy_module() -> None:
    """Every command and group of the app, walked in one process: its help leaves the heavy modules unloaded."""
    result = subprocess.run(
        [sys.executable, "-c", _every_help.format(heavy=heavy)], capture_output=True, text=True, timeout=120
    )
    loaded = json.loads(result.stderr.splitlines()[-1] if result.stderr else "{}")
    assert len(loaded) >= 20 and {"ingest", "close-epoch", "settle", "report", "demo"} <= set(loaded)
    assert {command: modules for command, modules in loaded.items() if modules} == {}


def test_the_light_env_prefix_is_the_settings_one() -> None:
    from royalty import common, config

    assert common.env_prefix == config.env_prefix


_modules_after_verify = """
import json, sys
import typer.main
from royalty.cli import app

try:
    typer.main.get_command(app).main(["verify", "--lake", sys.argv[1]], prog_name="royalty", standalone_mode=False)
except SystemExit:
    pass
sys.stderr.write(json.dumps(sorted(sys.modules)))
"""


def test_a_ledger_command_loads_no_chain_client(tmp_path) -> None:
    """`royalty verify` declares the settlement's tables (settlement.onchain.tables) but never loads web3 or
    eth_account (about 1.5 s of imports): the settlement packages' names are imported on first use."""
    result = subprocess.run(
        [sys.executable, "-c", _modules_after_verify, str(tmp_path / "none")], capture_output=True, text=True
    )
    loaded = set(json.loads(result.stderr.splitlines()[-1]))
    assert "no ledger" in result.stderr and "settlement.onchain.tables" in loaded
    assert not {"web3", "eth_account", "settlement.onchain.chain"} & loaded
