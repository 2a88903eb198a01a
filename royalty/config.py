"""Configuration: defaults, then a TOML file, then environment variables, then flags.

Every setting has a default and a one-line description. The TOML file is `royalty.toml`
in the working directory, or the file named by `--config` / `ROYALTY_CONFIG`; environment
variables are `ROYALTY_<NAME>` in upper case; a flag given on the command line wins.
"""

import os
import sys
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, get_type_hints

from ingest.constants import batch_bytes_limit, batch_bytes_max_default, batch_records_limit
from schemas.errors import RoyaltyError
from schemas.limits import event_time_future_s_max_default, event_time_future_s_max_limit

config_file_default = "royalty.toml"
env_prefix = "ROYALTY_"


class ConfigError(RoyaltyError):
    """A setting is missing or malformed."""


def _setting(default: Any, description: str) -> Any:
    return field(default=default, metadata={"description": description})


@dataclass(frozen=True)
class Settings:
    """Every setting of the `royalty` commands."""

    lake: str = _setting("./lake", "Ledger location: a directory (embedded SQLite catalog) or a PostgreSQL URL.")
    data_path: str | None = _setting(None, "Folder of the ledger's Parquet files (required with PostgreSQL).")
    reader_lake: str | None = _setting(
        None, "SELECT-only PostgreSQL DSN (`royalty catalog grant-reader`) for `royalty sql`, `export`, `report`."
    )
    bootstrap_servers: str = _setting("127.0.0.1:9092", "Kafka bootstrap servers, HOST:PORT[,HOST:PORT...].")
    topics: tuple[str, ...] = _setting(("inference-events",), "Kafka topics to ingest.")
    group_id: str | None = _setting(None, "Kafka consumer group; unset: one process assigns all partitions.")
    asset: str = _setting("USDC", "The one asset fees are accepted in; other assets become dead letters.")
    batch_records_max: int = _setting(50_000, "Most messages in one ledger append.")
    batch_bytes_max: int = _setting(batch_bytes_max_default, "Most bytes of messages in one ledger append.")
    batch_latency_ms_max: int = _setting(1_000, "Longest a message waits before its batch is appended.")
    event_time_future_s_max: int = _setting(
        event_time_future_s_max_default,
        "Most seconds an event's `time` may be ahead of the ingest clock; later ones become dead letters.",
    )
    metrics_port: int | None = _setting(None, "Port of the Prometheus metrics endpoint; unset: none.")
    dead_letter_topic: str | None = _setting(None, "Kafka topic dead letters are also forwarded to.")
    log_format: str = _setting("json", "Log format: json (structured) or text.")
    rpc_url: str | None = _setting(None, "EVM JSON-RPC URL; unset: an in-process eth-tester chain (throwaway).")
    distributor: str | None = _setting(None, "Address of the RoyaltyDistributor contract settlements go to.")
    from_block: int | None = _setting(
        None, "Block the distributor was deployed in (`royalty deploy` prints it); its logs are read from there."
    )
    confirmations: int = _setting(1, "Blocks a settlement tx must have (its own included) before it is recorded.")
    keystore: str | None = _setting(None, "Encrypted keystore file of the signing key (password: env).")
    tree_dir: str | None = _setting(None, "Folder of per-epoch tree JSON files; unset: `<lake>/trees` (folder lake).")
    confirm_timeout_s: int = _setting(600, "Longest wait for a settlement tx's receipt and confirmations.")
    query_seconds_max: int = _setting(300, "Longest a `royalty sql` query may run before it is stopped.")
    query_memory_mb_max: int = _setting(4_096, "Most memory a `royalty sql` query may use (MiB); past it, it fails.")
    query_threads_max: int = _setting(4, "Most threads a `royalty sql` query runs on.")

    @classmethod
    def descriptions(cls) -> dict[str, str]:
        return {item.name: item.metadata["description"] for item in fields(cls)}


def load_settings(flags: dict[str, Any] | None = None, config_path: str | None = None) -> Settings:
    """Settings from the defaults, the TOML file, the environment and `flags` (None = not given)."""
    settings = Settings()
    path = config_path or os.environ.get(env_prefix + "CONFIG")
    if path is not None and not Path(path).is_file():
        raise ConfigError(f"configuration file `{path}` does not exist (from --config or {env_prefix}CONFIG)")
    path = path or (config_file_default if Path(config_file_default).is_file() else None)
    if path is not None:
        with open(path, "rb") as handle:
            try:
                table = tomllib.load(handle)
            except tomllib.TOMLDecodeError as error:
                raise ConfigError(f"configuration file `{path}` is not valid TOML: {error}") from error
        settings = _apply(settings, table, f"file `{path}`")
    environment = {
        item.name: os.environ[env_prefix + item.name.upper()]
        for item in fields(Settings)
        if env_prefix + item.name.upper() in os.environ
    }
    settings = _apply(settings, environment, "environment")
    settings = _apply(settings, {k: v for k, v in (flags or {}).items() if v is not None}, "flags")
    _warn_secret_flags(flags or {})
    _check_bounds(settings)
    return settings


# Inclusive bounds of numeric settings, so an operator's typo is a clear error, not a crash or a
# runaway: a batch is held in memory twice (ingest.constants), an hour is longer than any sane batch
# wait or interactive query, and no chain reorganises deeper than a day of Ethereum blocks. An analyst
# query below 64 MiB cannot hold one Parquet row group; 1 TiB and 256 threads exceed any one host.
setting_bounds: dict[str, tuple[int, int]] = {
    "batch_records_max": (1, batch_records_limit),
    "batch_bytes_max": (64 * 1024, batch_bytes_limit),
    "batch_latency_ms_max": (1, 3_600_000),
    "event_time_future_s_max": (1, event_time_future_s_max_limit),
    "confirmations": (1, 7_200),
    "from_block": (0, 2**63 - 1),
    "confirm_timeout_s": (1, 86_400),
    "query_seconds_max": (1, 3_600),
    "query_memory_mb_max": (64, 1_048_576),
    "query_threads_max": (1, 256),
    "metrics_port": (1, 65_535),
}


def _warn_secret_flags(flags: dict[str, Any]) -> None:
    """Warn when a flag carries a credential: every user of the machine reads it in the process list."""
    for name in ("lake", "reader_lake", "rpc_url"):
        value = flags.get(name)
        if not isinstance(value, str) or ("://" not in value and "password" not in value.lower()):
            continue
        from ledger.redact import dsn_password, redact_url  # only now: `ledger` imports DuckDB

        if dsn_password(value) is not None or (name == "rpc_url" and redact_url(value) != value):
            sys.stderr.write(
                f"warning: --{name.replace('_', '-')} carries a credential, which any user of this machine can "
                f"read in the process list (ps); set {env_prefix}{name.upper()} instead, and for PostgreSQL keep "
                "the password in a passfile (PGPASSFILE, ~/.pgpass) or a service (service=NAME)\n"
            )


def _check_bounds(settings: Settings) -> None:
    for name, (low, high) in setting_bounds.items():
        value = getattr(settings, name)
        if value is not None and not low <= value <= high:
            raise ConfigError(f"setting `{name}` is {value:,}; it must be from {low:,} to {high:,}")


def _apply(settings: Settings, values: dict[str, Any], origin: str) -> Settings:
    hints = get_type_hints(Settings)
    changes = {}
    for name, value in values.items():
        key = name.replace("-", "_")
        if key not in hints:
            known = ", ".join(sorted(hints))
            raise ConfigError(f"unknown setting `{name}` in {origin}; known settings: {known}")
        changes[key] = _coerce(key, hints[key], value, origin)
    return replace(settings, **changes)


def _coerce(name: str, hint: Any, value: Any, origin: str) -> Any:
    text = str(hint)
    try:
        if "tuple" in text:
            if isinstance(value, str):
                return tuple(part.strip() for part in value.split(",") if part.strip())
            return tuple(str(item) for item in value)
        if "int" in text:
            return None if value in ("", None) else int(value)
        return None if value == "" and "None" in text else str(value)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"setting `{name}` from {origin} is {value!r}, not a valid {text}") from error
