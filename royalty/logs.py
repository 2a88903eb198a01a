"""Logging on standard error: readable text on a terminal, one JSON object per line otherwise or when asked.

`log_format` is `auto` (the default: text when standard error is a terminal, JSON when it is a pipe or a file,
as under a supervisor or a log shipper), `json` or `text`. Text lines carry the same fields as the JSON ones,
as `key=value` after the message. Every line is passed through `ledger.redact` last, so a credential in a
message, an `extra` field or a traceback (a DSN's password, an RPC URL's key) is masked whoever wrote it.
"""

import json
import logging
import sys
from datetime import UTC, datetime

log_formats = ("auto", "json", "text")
# kafka-python logs every connection attempt at INFO and each failed one at ERROR: the service reports the
# broker's state itself (unreachable, reachable again), so only kafka-python's warnings and worse are shown.
_quiet_loggers = {"kafka": logging.WARNING}

_standard_attributes = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class ClosedSocketRace(logging.Filter):
    """Show at WARNING, not ERROR, kafka-python's report of a read that woke after the connection closed its socket.

    kafka-python 3.0.12's reader task (`kafka.net.transport`) may wake from its wait after `close()` has set the socket
    to None, and logs the AttributeError at ERROR ("Error receiving network data closing socket") while it closes the
    connection that was closing anyway (seen once in a CI run of `royalty demo`, at a consumer's close). Any other error
    it logs, a reset or refused connection included, stays at ERROR."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if (
            record.levelno >= logging.ERROR
            and isinstance(error, AttributeError)
            and str(error) == "'NoneType' object has no attribute 'recv'"
        ):
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        return True


_kafka_transport_logger = "kafka.net.transport"


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _standard_attributes}


def _redacted(text: str) -> str:
    from ledger.redact import redact  # here, not at the top: `ledger` imports DuckDB, slow for `--help`

    return redact(text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_extras(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _redacted(json.dumps(entry, default=str))


class TextFormatter(logging.Formatter):
    """`HH:MM:SS LEVEL logger: message key=value ...`, credentials masked; numbers with thousands separators."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        fields = " ".join(f"{key}={_readable(value)}" for key, value in _extras(record).items())
        line = f"{moment} {record.levelname:<7} {record.name}: {record.getMessage()}" + (
            f"  {fields}" if fields else ""
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return _redacted(line)


def _readable(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".")
    text = str(value)
    return json.dumps(text) if (not text or any(c.isspace() for c in text)) else text


def resolved_format(log_format: str, stream: object = None) -> str:
    """`json` or `text`: `auto` is text on a terminal, JSON otherwise."""
    if log_format not in log_formats:
        raise ValueError(f"log format `{log_format}` is not one of {', '.join(log_formats)}")
    if log_format != "auto":
        return log_format
    isatty = getattr(stream if stream is not None else sys.stderr, "isatty", None)
    return "text" if isatty is not None and isatty() else "json"


def configure_logging(log_format: str = "auto", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if resolved_format(log_format, sys.stderr) == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name, quiet_level in _quiet_loggers.items():
        logging.getLogger(name).setLevel(max(level, quiet_level))
    transport = logging.getLogger(_kafka_transport_logger)
    if not any(isinstance(existing, ClosedSocketRace) for existing in transport.filters):
        transport.addFilter(ClosedSocketRace())
