"""`royalty demo`, the README's first command: it runs to the end and its figures are the ledger's."""

import json
import re
import subprocess
from pathlib import Path

import pytest

from royalty.demo import summary_queries
from tests.conftest import depth, royalty_command


@pytest.mark.slow
def test_demo_runs_to_the_end_and_its_summary_matches_royalty_sql(tmp_path: Path) -> None:
    """The summary matches `royalty sql` for each figure; two claims pay their payables; a report is written."""
    result = subprocess.run(
        royalty_command("demo", "--workdir", str(tmp_path), "--events", str(depth(25_000, 100_000))),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lake = tmp_path / "lake"
    for name, sql in summary_queries().items():
        row = re.search(rf"│ {re.escape(name)}\s*│\s*([\d,]+) │", result.stdout)
        assert row, f"`{name}` missing from the summary:\n{result.stdout}"
        answer = subprocess.run(
            royalty_command("sql", "--lake", str(lake), "--format", "json", sql),
            capture_output=True,
            text=True,
            check=True,
        )
        (value,) = json.loads(answer.stdout)[0].values()
        assert int(row.group(1).replace(",", "")) == value, name
    # Dead letters by reason_code (issue 21): one row per code, summing to the `dead letters` figure.
    reason_table = result.stdout.split("dead letters by reason_code")[1]
    by_reason = dict(re.findall(r"│ ([a-z0-9_]+)\s*│\s*([\d,]+) │", reason_table))
    total = int(by_reason.pop("total").replace(",", ""))
    dead_letters = int(re.search(r"│ dead letters\s*│\s*([\d,]+) │", result.stdout).group(1).replace(",", ""))
    assert total == sum(int(v.replace(",", "")) for v in by_reason.values()) == dead_letters
    assert "conflicting_duplicate" in by_reason and len(by_reason) >= 3
    # The story on top of the sample (issue 21): refunds settled and calls to an unregistered model in suspense.
    for figure in ("reversals settled", "calls held in suspense"):
        assert int(re.search(rf"│ {figure}\s*│\s*([\d,]+) │", result.stdout).group(1).replace(",", "")) > 0, figure
    claims = re.findall(
        r"claimed (0x[0-9a-fA-F]{40}): cumulative ([\d,]+) units,\s*token balance now ([\d,]+)", result.stdout
    )
    assert len(claims) == 2
    assert all(cumulative == balance for _, cumulative, balance in claims), claims
    assert "Reviewed and approved" in (tmp_path / "report.html").read_text()
    reconciliation = subprocess.run(
        royalty_command(
            "sql",
            "--lake",
            str(lake),
            "--format",
            "json",
            "SELECT check_name, items_off, difference_micros FROM reconciliation",
        ),
        capture_output=True,
        text=True,
        check=True,
    )
    rows = json.loads(reconciliation.stdout)
    assert rows and all(row["items_off"] == 0 and row["difference_micros"] == 0 for row in rows), rows
    assert subprocess.run(royalty_command("verify", "--lake", str(lake)), capture_output=True).returncode == 0
