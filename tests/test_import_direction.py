"""The packages import one way only: schemas → ledger → {ingest, settlement.engine} → settlement.onchain /
settlement.reports → royalty (docs/architecture.md). A small AST check over every production module,
lazy imports inside functions included; no import is executed.
"""

import ast
from pathlib import Path

import pytest

repo_root = Path(__file__).resolve().parents[1]
packages = ("schemas", "ledger", "ingest", "settlement", "royalty")

# The units of the layering, most specific first; a module belongs to the first one that prefixes its name.
units = (
    "settlement.engine",
    "settlement.onchain",
    "settlement.reports",
    "settlement.use_cases",
    "settlement.exceptions",
    "settlement",
    "schemas",
    "ledger",
    "ingest",
    "royalty",
)
_settlement_base = {"schemas", "ledger", "settlement", "settlement.exceptions", "settlement.engine"}
# What each unit may import from (besides third-party packages and itself).
allowed = {
    "schemas": {"schemas"},
    "ledger": {"schemas", "ledger"},
    "ingest": {"schemas", "ledger", "ingest"},
    "settlement.exceptions": {"schemas"},
    # The engine is pure: it sees the producer contract and the settlement's root error, nothing of the ledger.
    "settlement.engine": {"schemas", "settlement.exceptions", "settlement.engine"},
    # settlement's own modules: its ledger tables, reading and writing the ledger, input checks, close_epoch.
    "settlement": _settlement_base,
    "settlement.onchain": _settlement_base | {"settlement.onchain"},
    "settlement.reports": _settlement_base | {"settlement.onchain", "settlement.reports"},
    "settlement.use_cases": _settlement_base | {"settlement.onchain", "settlement.reports", "settlement.use_cases"},
    "royalty": set(units),
}
# Third-party packages a unit must not import at all.
banned_third_party = {"settlement.engine": {"duckdb", "web3", "eth_account", "eth_abi", "rich", "requests"}}
# Known exceptions, each with its reason; the list only shrinks.
known_exceptions = {
    # The SQL reference re-implements the split rules in DuckDB SQL over in-memory frames (never the ledger),
    # as an independent check of the polars engine in tests and benchmarks.
    ("settlement/engine/reference_sql.py", "duckdb"),
}


def _unit(name: str) -> str | None:
    for unit in units:
        if name == unit or name.startswith(unit + "."):
            return unit
    return None


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(repo_root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _production_modules() -> list[Path]:
    return sorted(p for package in packages for p in (repo_root / package).rglob("*.py"))


def _imported_names(tree: ast.AST) -> list[tuple[int, str]]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from settlement import tables` imports the module settlement.tables when it is one.
            names += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return names


def _violations() -> list[str]:
    found = []
    for path in _production_modules():
        unit = _unit(_module_name(path))
        relative = path.relative_to(repo_root).as_posix()
        for line, name in _imported_names(ast.parse(path.read_text(encoding="utf-8"))):
            top = name.split(".")[0]
            target = _unit(name)
            if target is not None and target not in allowed[unit] and target != unit:
                found.append(f"{relative}:{line} ({unit}) imports {name} ({target})")
            elif top in banned_third_party.get(unit, set()) and (relative, top) not in known_exceptions:
                found.append(f"{relative}:{line} ({unit}) imports {top}, which it must not")
    return found


def test_every_import_goes_down_the_layers() -> None:
    """Lower layers never import higher ones; the engine imports no duckdb, web3 or rich."""
    assert _violations() == []


def test_the_check_sees_a_wrong_way_import(tmp_path: Path) -> None:
    """The check is not vacuous: an engine module importing the ledger or duckdb is reported."""
    tree = ast.parse("import duckdb\ndef f():\n    from ledger.ledger import Ledger\n")
    names = [name for _, name in _imported_names(tree)]
    assert names == ["duckdb", "ledger.ledger.Ledger"]
    assert _unit("ledger.ledger.Ledger") not in allowed["settlement.engine"]
    assert "duckdb" in banned_third_party["settlement.engine"]


# DuckLake's internal catalog tables and its snapshot and file functions: only ledger/ (its recorder API,
# ledger/recorder.py) touches them.
_ducklake_internals = (
    "__ducklake_metadata",
    "ducklake_snapshots(",
    "ducklake_table_insertions(",
    "ducklake_list_files(",
)
# Modules outside ledger/ name a ledger table through the recorder API (`recorder.table(name)`), never by
# the catalog's alias and schema (`lake.main...` or `{catalog_alias}.main...`). The benchmarks are held to it too.
_lake_main = ("lake.main", "catalog_alias}.main", "import catalog_alias")
_outside_ledger = [p for p in packages if p != "ledger"] + ["benchmarks"]


def _modules_naming(package: str, markers: tuple[str, ...]) -> set[str]:
    return {
        path.relative_to(repo_root).as_posix()
        for path in (repo_root / package).rglob("*.py")
        if any(marker in path.read_text(encoding="utf-8") for marker in markers)
    }


@pytest.mark.parametrize("package", _outside_ledger)
def test_only_the_ledger_reaches_into_ducklake_internals(package: str) -> None:
    """No module outside ledger/ joins `__ducklake_metadata_*` or calls DuckLake's snapshot or file functions."""
    assert _modules_naming(package, _ducklake_internals) == set()


@pytest.mark.parametrize("package", _outside_ledger)
def test_no_module_outside_the_ledger_builds_lake_main_sql(package: str) -> None:
    """No module outside ledger/ names `lake.main` or the catalog alias: tables are named by `recorder.table`."""
    assert _modules_naming(package, _lake_main) == set()


def test_the_lake_main_check_sees_an_offender(tmp_path: Path) -> None:
    """The check is not vacuous: a module building `lake.main` SQL is reported."""
    (tmp_path / "offender.py").write_text('QUERY = "SELECT * FROM lake.main.settlement_epoch"\n')
    found = {p.name for p in tmp_path.rglob("*.py") if any(m in p.read_text() for m in _lake_main)}
    assert found == {"offender.py"}


_settlement_surfaces = {"settlement", "settlement.engine", "settlement.onchain", "settlement.reports"}


def test_the_cli_imports_settlement_only_through_its_package_surfaces() -> None:
    """royalty/ imports a settlement package's `__init__` names, or a verb's module in settlement.use_cases."""
    found = []
    for path in sorted((repo_root / "royalty").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("settlement"):
                module = node.module or ""
                if module not in _settlement_surfaces and not module.startswith("settlement.use_cases."):
                    found.append(f"{path.relative_to(repo_root).as_posix()}:{node.lineno} imports {module}")
            elif isinstance(node, ast.Import):
                found += [f"{path.name}:{node.lineno} {a.name}" for a in node.names if a.name.startswith("settlement")]
    assert found == []
