"""Structured logging: one JSON object per line on standard error (or plain text).

Every line is passed through `ledger.redact` last, so a credential in a message, an `extra` field
or a traceback (a DSN's password, an RPC URL's key) is masked whoever wrote it.
"""

import json
import logging
import sys
from datetime import UTC, datetime

_standard_attributes = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _standard_attributes})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        from ledger.redact import redact  # here, not at the top: `ledger` imports DuckDB, slow for `--help`

        return redact(json.dumps(entry, default=str))


class RedactingFormatter(logging.Formatter):
    """The plain-text format, credentials masked."""

    def format(self, record: logging.LogRecord) -> str:
        from ledger.redact import redact

        return redact(super().format(record))


def configure_logging(log_format: str = "json", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
