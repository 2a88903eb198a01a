"""Printing Arrow results as a table, CSV or JSON."""

import csv
import io
import json
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from rich.console import Console

if TYPE_CHECKING:
    import pyarrow as pa  # only the type: pyarrow is slow to import for `royalty --help`
from rich.table import Table

output_formats = ("table", "csv", "json")


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        # SUM over BIGINT money is a 128-bit integer in DuckDB; print it whole, never as a float.
        return int(value) if value == value.to_integral_value() else str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def render(table: "pa.Table", output_format: str, console: Console) -> None:
    rows = [{key: _plain(value) for key, value in row.items()} for row in table.to_pylist()]
    if output_format == "json":
        console.file.write(json.dumps(rows, indent=None) + "\n")
    elif output_format == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")  # LF: a shell reading a value gets no stray CR
        writer.writerow(table.column_names)
        for row in rows:
            writer.writerow([json.dumps(v) if isinstance(v, list | dict) else v for v in row.values()])
        console.file.write(buffer.getvalue())
    else:
        view = Table(*table.column_names, show_lines=False)
        for row in rows:
            view.add_row(*("NULL" if v is None else str(v) for v in row.values()))
        console.print(view)
        console.print(f"{table.num_rows:,} row(s)", style="dim")
