"""Contributor statements of one closed epoch as Parquet and CSV, for Spark, Trino and spreadsheets.

Each top-level folder of DIR is one table across epochs, partitioned Hive-style (`epoch=N/`), so
`spark.read.parquet("DIR/statements")` or a Trino/Hive external table over it sees `epoch` (and `recipient`)
as columns; the `_csv` twins hold the same rows for spreadsheets:

- `payables/epoch=N/payables.parquet` (+ `payables_csv/`): one row per recipient: what became payable, cumulative.
- `postings/epoch=N/postings.parquet` (+ `postings_csv/`): every posting (debits positive, credits negative).
- `statements/epoch=N/recipient=<id>/*.parquet` (+ `statements_csv/`): each contributor's statement lines,
  i.e. the postings that credited them, `credited_micros` positive.
- `manifests/epoch=N.json`: row counts and totals, to check an import against.
"""

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import duckdb

from ledger import recorder
from ledger.attach import closing_snapshot
from ledger.ledger import Ledger
from settlement.engine.accounts import contributor_prefix
from settlement.onchain.settle import read_stored_manifest, read_stored_tree

tables = ("payables", "payables_csv", "postings", "postings_csv", "statements", "statements_csv", "manifests")
_parquet = "FORMAT parquet, COMPRESSION zstd"
_csv = "FORMAT csv, HEADER true"


@dataclass(frozen=True)
class ExportSummary:
    """What `export_epoch` wrote. Money in micros."""

    epoch: int
    directory: str
    recipients: int
    postings: int
    statement_lines: int
    payable_micros: int
    credited_micros: int
    asset: str | None
    # The link to the epoch's bundle (issue 18): the digest its root committed to, under which rules, and how
    # anyone checks the statements' epoch from the published files.
    ledger_digest: str | None = None  # None until `settle` wrote the epoch's tree
    rules_version: str | None = None
    audit_command: str = ""


def export_epoch(ledger: Ledger, epoch: int, directory: Path) -> ExportSummary:
    """Write epoch `epoch`'s payables, postings and per-contributor statements under `directory`.

    A previous export of the same epoch there is replaced (other epochs are kept): the files are a pure
    function of the ledger.
    """
    closing_snapshot(ledger, epoch)  # raises when the epoch is not closed
    ((asset,),) = ledger.recorder.read(
        lambda connection: connection.execute(
            f"SELECT any_value(asset) FROM {recorder.table('inference_metered')}"
        ).fetchall(),
        "read the asset",
    )
    directory = Path(directory)
    partition = f"epoch={int(epoch)}"
    for folder in tables:
        if (directory / folder / partition).exists():
            shutil.rmtree(directory / folder / partition)
        (directory / folder / partition).mkdir(parents=True)

    queries = {
        "payables": f"""
            SELECT recipient, payout_address, credited_micros, amount_micros, earned_micros, cumulative_micros,
                   receivable_micros, ?::VARCHAR AS asset
            FROM {recorder.table('settlement_payable')} WHERE epoch = ? ORDER BY recipient""",
        "postings": f"""
            SELECT entry_id, entry_kind, account, amount_micros, model_id, policy_id
            FROM {recorder.table('settlement_posting')} WHERE epoch = ? ORDER BY entry_id, account""",
        "statements": f"""
            SELECT substr(account, {len(contributor_prefix) + 1}) AS recipient, entry_id, entry_kind, model_id,
                   policy_id, -amount_micros AS credited_micros, ?::VARCHAR AS asset
            FROM {recorder.table('settlement_posting')}
            WHERE epoch = ? AND starts_with(account, '{contributor_prefix}')
            ORDER BY recipient, entry_id""",
    }
    parameters = {"payables": [asset, epoch], "postings": [epoch], "statements": [asset, epoch]}
    recipients, payable_micros, postings, lines, credited_micros = ledger.recorder.read(
        lambda connection: _write_files(connection, directory, partition, epoch, queries, parameters),
        f"export epoch {epoch}",
    )
    summary = ExportSummary(
        epoch=epoch,
        directory=str(directory),
        recipients=recipients,
        postings=postings,
        statement_lines=lines,
        payable_micros=payable_micros,
        credited_micros=credited_micros,
        asset=asset,
        **bundle_link(ledger, epoch),
    )
    (directory / "manifests" / f"{partition}.json").write_text(json.dumps(asdict(summary), indent=2) + "\n")
    return summary


def _write_files(
    connection: duckdb.DuckDBPyConnection,
    directory: Path,
    partition: str,
    epoch: int,
    queries: dict[str, str],
    parameters: dict[str, list],
) -> tuple[int, int, int, int, int]:
    """Write the epoch's files (each replaced when a retry writes it again); (recipients, payable micros,
    postings, statement lines, credited micros), all as of one snapshot."""
    for name in ("payables", "postings"):
        for folder, options in ((name, _parquet), (f"{name}_csv", _csv)):
            path = directory / folder / partition / f"{name}.{'csv' if options == _csv else 'parquet'}"
            connection.execute(f"COPY ({queries[name]}) TO {_literal(str(path))} ({options})", parameters[name])
    # Spark refuses a column that is both in the files and in the folder names, so the Parquet statements
    # carry `recipient` only in their path; a spreadsheet opens one CSV alone, so the CSV keeps it.
    for folder, options in (
        ("statements", f"{_parquet}, PARTITION_BY (recipient)"),
        ("statements_csv", f"{_csv}, PARTITION_BY (recipient), WRITE_PARTITION_COLUMNS true"),
    ):
        connection.execute(
            f"COPY ({queries['statements']}) TO {_literal(str(directory / folder / partition))} "
            f"({options}, OVERWRITE_OR_IGNORE true)",
            parameters["statements"],
        )

    recipients, payable_micros = connection.execute(
        "SELECT count(*), coalesce(sum(amount_micros), 0)::BIGINT "
        f"FROM {recorder.table('settlement_payable')} WHERE epoch = ?",
        [epoch],
    ).fetchall()[0]
    postings, lines, credited_micros = connection.execute(
        f"""SELECT count(*), count(*) FILTER (WHERE starts_with(account, '{contributor_prefix}')),
                   coalesce(-sum(amount_micros) FILTER (WHERE starts_with(account, '{contributor_prefix}')), 0)::BIGINT
            FROM {recorder.table('settlement_posting')} WHERE epoch = ?""",
        [epoch],
    ).fetchall()[0]
    return recipients, payable_micros, postings, lines, credited_micros


def bundle_link(ledger: Ledger, epoch: int) -> dict:
    """What links an epoch's statements to its bundle: the settled ledger digest (settlement-v2 and v3: the SHA-256
    of the manifest `royalty publish` writes), its rules version, and the commands that check it."""
    settled, stored = ledger.recorder.read(
        lambda c: (read_stored_tree(c, epoch), read_stored_manifest(c, epoch)), "read the epoch's tree and manifest"
    )
    version = None
    if settled is not None:  # the version the stored manifest names (v2, or v3 for an epoch paying holders)
        version = "settlement-v1" if stored is None else str(json.loads(stored)["rules_version"])
    folder = f"bundle-epoch-{int(epoch)}"
    return {
        "ledger_digest": settled.ledger_digest if settled else None,
        "rules_version": version,
        "audit_command": f"royalty publish --epoch {int(epoch)} --to {folder} && royalty audit --bundle {folder} "
        "--rpc-url URL --distributor 0x…",
    }


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
