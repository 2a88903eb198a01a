"""Configuration: defaults, then a TOML file, then environment variables, then flags.

Every setting has a default and a one-line description, and numeric ones have inclusive bounds
(field constraints). The TOML file is `royalty.toml` in the working directory, or the file named by
`--config` / `ROYALTY_CONFIG`; environment variables are `ROYALTY_<NAME>` in upper case; a flag given
on the command line wins. pydantic-settings layers and validates them; this module turns its errors
into one-line `ConfigError`s and keeps renamed settings working (with a warning) under their old names.
"""

import difflib
import os
import sys
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from annotated_types import Ge, Le
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from ingest.constants import (
    batch_bytes_max_default,
    batch_bytes_max_limit,
    batch_records_max_limit,
    broker_unreachable_s_max_default,
    broker_unreachable_s_max_limit,
)
from royalty.exceptions import ConfigError
from schemas.limits import (
    event_time_future_s_max_default,
    event_time_future_s_max_limit,
    holder_dust_units_min_limit,
    policy_notice_s_max,
)
from schemas.type_names import registry_event_types as registry_types  # not schemas.events: slow

config_file_default = "royalty.toml"
env_prefix = "ROYALTY_"

# Renamed settings: old name -> new name. The old name still works in the TOML file and the
# environment (ROYALTY_<OLD>), with a warning naming the new one; the new name wins when both are set.
deprecated_settings: dict[str, str] = {"query_seconds_max": "query_s_max"}

# ROYALTY_* variables that are not settings (secrets, test and CI knobs): never warned about.
_other_env_names = frozenset({"CONFIG", "SETTLER_KEY", "CLAIMER_KEY", "KEYSTORE_PASSWORD", "READER_PASSWORD"})

# The TOML table of the current `load_settings` call, read by `_TomlSource`.
_toml_table: ContextVar[dict[str, Any] | None] = ContextVar("royalty_toml_table", default=None)


def _setting(default: Any, description: str, bounds: tuple[int, int] | None = None, secret: bool = False) -> Any:
    """A field; `secret`: may carry a credential (a DSN's or URL's password), so it is left out of repr."""
    low, high = bounds or (None, None)
    return Field(default=default, description=description, ge=low, le=high, repr=not secret)


# Bounds of numeric settings, so an operator's typo is a clear error, not a crash or a runaway: a batch is
# held in memory twice (ingest.constants), an hour is longer than any sane batch wait or interactive query,
# and no chain reorganises deeper than a day of Ethereum blocks. An analyst query below 64 MiB cannot hold
# one Parquet row group; 1 TiB and 256 threads exceed any one host.
class Settings(BaseSettings):
    """Every setting of the `royalty` commands."""

    model_config = SettingsConfigDict(
        env_prefix=env_prefix, extra="forbid", frozen=True, coerce_numbers_to_str=True, validate_default=False
    )

    lake: str = _setting(
        "./lake", "Ledger location: a directory (embedded SQLite catalog) or a PostgreSQL URL.", secret=True
    )
    data_path: str | None = _setting(None, "Folder of the ledger's Parquet files (required with PostgreSQL).")
    s3_endpoint_url: str | None = _setting(
        None, "S3-compatible endpoint of an `s3://` data path (http://host:port); unset: AWS_ENDPOINT_URL, else AWS."
    )
    s3_region: str | None = _setting(None, "Region of an `s3://` data path; unset: AWS_REGION, else us-east-1.")
    s3_access_key_id: str | None = _setting(None, "Access key of an `s3://` data path; unset: AWS_ACCESS_KEY_ID.")
    s3_secret_access_key: SecretStr | None = _setting(
        None,
        "Secret key of an `s3://` data path: set ROYALTY_S3_SECRET_ACCESS_KEY (never a flag) or "
        "AWS_SECRET_ACCESS_KEY; never logged.",
        secret=True,
    )
    s3_url_style: Literal["path", "vhost"] | None = _setting(
        None, "S3 URL style: path (host/bucket/key) or vhost; unset: path with an endpoint, vhost for AWS."
    )
    reader_lake: str | None = _setting(
        None,
        "SELECT-only PostgreSQL DSN (`royalty catalog grant-reader`) for `royalty sql`, `export`, `report`.",
        secret=True,
    )
    bootstrap_servers: str = _setting("127.0.0.1:9092", "Kafka bootstrap servers, HOST:PORT[,HOST:PORT...].")
    # NoDecode: the environment gives a comma-separated list (`a,b`), not JSON.
    topics: Annotated[tuple[str, ...], NoDecode] = _setting(("inference-events",), "Kafka topics to ingest.")
    group_id: str | None = _setting(None, "Kafka consumer group; unset: one process assigns all partitions.")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = _setting(
        "PLAINTEXT", "How ingest connects to Kafka: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (docs/operations.md)."
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = _setting(
        None, "SASL mechanism with a SASL_* protocol: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512."
    )
    kafka_sasl_username: str | None = _setting(None, "SASL user ingest authenticates as.")
    kafka_sasl_password: SecretStr | None = _setting(
        None, "SASL password: set ROYALTY_KAFKA_SASL_PASSWORD (never a flag); never logged.", secret=True
    )
    kafka_ssl_cafile: str | None = _setting(None, "PEM file of the CA that signed the brokers' certificates.")
    kafka_ssl_certfile: str | None = _setting(None, "PEM file of ingest's client certificate (mutual TLS).")
    kafka_ssl_keyfile: str | None = _setting(None, "PEM file of the client certificate's private key.")
    kafka_ssl_password: SecretStr | None = _setting(
        None, "Password of an encrypted client key: set ROYALTY_KAFKA_SSL_PASSWORD; never logged.", secret=True
    )
    kafka_ssl_check_hostname: bool = _setting(True, "Check that a broker's certificate names its host.")
    broker_unreachable_s_max: int = _setting(
        broker_unreachable_s_max_default,
        "Seconds `ingest` waits for a broker it has never reached since start before it exits 75.",
        (1, broker_unreachable_s_max_limit),
    )
    asset: str = _setting("USDC", "The one asset fees are accepted in; other assets become dead letters.")
    batch_records_max: int = _setting(50_000, "Most messages in one ledger append.", (1, batch_records_max_limit))
    batch_bytes_max: int = _setting(
        batch_bytes_max_default, "Most bytes of messages in one ledger append.", (64 * 1024, batch_bytes_max_limit)
    )
    batch_latency_ms_max: int = _setting(1_000, "Longest a message waits before its batch is appended.", (1, 3_600_000))
    compact_when_idle_s: int = _setting(
        0,
        "`ingest` compacts the ledger (as `royalty compact`) once its source has been quiet this many seconds; "
        "0: never.",
        (0, 86_400),
    )
    expire_when_idle_s: int = _setting(
        0,
        "`ingest` expires old snapshots (as `royalty expire`, after its idle compaction when both are due) once its "
        "source has been quiet this many seconds; 0: never.",
        (0, 86_400),
    )
    expire_older_than_s: int | None = _setting(
        None,
        "Snapshots younger than this many seconds are kept by `royalty expire` and by ingest's idle expiry; unset: "
        "3,600 (an hour; a longer window slows every append on an SQLite catalog: docs/operations.md).",
        (0, 3_650 * 86_400),
    )
    event_time_future_s_max: int = _setting(
        event_time_future_s_max_default,
        "Most seconds an event's `time` may be ahead of the ingest clock; later ones become dead letters.",
        (1, event_time_future_s_max_limit),
    )
    metrics_port: int | None = _setting(None, "Port of the Prometheus metrics endpoint; unset: none.", (1, 65_535))
    pushgateway_url: str | None = _setting(
        None, "Prometheus Pushgateway URL `close-epoch` and `settle` push their figures to; unset: none.", secret=True
    )
    dead_letter_topic: str | None = _setting(None, "Kafka topic dead letters are also forwarded to.")
    log_format: Literal["auto", "json", "text"] = _setting(
        "auto", "Log format: auto (text on a terminal, JSON otherwise), json (one object a line) or text."
    )
    rpc_url: str | None = _setting(
        None, "EVM JSON-RPC URL; unset: an in-process eth-tester chain (throwaway).", secret=True
    )
    distributor: str | None = _setting(None, "Address of the RoyaltyDistributor contract settlements go to.")
    from_block: int | None = _setting(
        None,
        "Block the distributor was deployed in (`royalty deploy` prints it); its logs are read from there.",
        (0, 2**63 - 1),
    )
    confirmations: int = _setting(
        1, "Blocks a settlement tx must have (its own included) before it is recorded.", (1, 7_200)
    )
    funding_cap_units: int | None = _setting(
        None,
        "Most token units one `settle` run may pull from the treasury into the distributor; unset: no funding "
        "off a local chain (a shortfall stops with the figures).",
        (0, 2**128 - 1),
    )
    registry_mode: Literal["operator", "onchain"] = _setting(
        "operator",
        "Who decides who is paid: `onchain` (a ModelRegistry contract, synced by `sync-registry`) or `operator` "
        "(registry events on Kafka from allowlisted sources).",
    )
    registry: str | None = _setting(None, "Address of the ModelRegistry contract (`royalty deploy-registry`).")
    registry_from_block: int | None = _setting(
        None,
        "Block the registry was deployed in (`royalty deploy-registry` prints it); its events are read from there.",
        (0, 2**63 - 1),
    )
    # NoDecode: TOML gives a table, the environment JSON (`{"ai.split-policy.set.v1": ["//governance"]}`).
    registry_sources: dict[str, tuple[str, ...]] = _setting(
        {},
        "Operator registry: per registry event type, the CloudEvents sources that may write it for any id "
        "(a listed type admits new ids only from them); others only for the ids their source registered.",
    )
    reversal_sources: Annotated[tuple[str, ...], NoDecode] = _setting(
        (), "Sources that may reverse any source's events (besides the event's own source), comma-separated."
    )
    holder_excluded: Annotated[tuple[str, ...], NoDecode] = _setting(
        (),
        "Addresses never paid as token holders (pools, treasuries, bridges), comma-separated; the zero address, "
        "the token itself and the distributor never are. Their share goes to the other holders.",
    )
    holder_dust_units_min: int = _setting(
        0,
        "Token holders: a holder's part of an epoch (plus what it carried) below this many units of the payout "
        "asset is carried forward for it, not paid, until it reaches this; 0: every part is paid.",
        (0, holder_dust_units_min_limit),
    )
    payer_receipts: bool = _setting(
        True,
        "Commit each allocation group's event sum-tree root in the epoch's bundle, so payers can prove an event "
        "counted (`royalty receipt`); off: no event commitment, and settle composes the manifest faster.",
    )
    close_from_rollups: bool = _setting(
        False,
        "close-epoch reads the appends' rollups (ledger format 13) instead of every event where that is exact, and "
        "the events of the other (model, hour) cells: the same epoch, at a cost that grows with groups, not events.",
    )
    policy_notice_s: int | None = _setting(
        None,
        "Operator registry: refuse a policy change (not a model's first) taking effect sooner than this many "
        "seconds after it arrives; unset: no notice (historical backfills load).",
        (0, policy_notice_s_max),
    )
    keystore: str | None = _setting(None, "Encrypted keystore file of the signing key (password: env).")
    tree_dir: str | None = _setting(None, "Folder of per-epoch tree JSON files; unset: `<lake>/trees` (folder lake).")
    confirm_timeout_s: int = _setting(600, "Longest wait for a settlement tx's receipt and confirmations.", (1, 86_400))
    query_s_max: int = _setting(300, "Longest a `royalty sql` query may run before it is stopped.", (1, 3_600))
    query_memory_mb_max: int = _setting(
        4_096, "Most memory a `royalty sql` query may use (MiB); past it, it fails.", (64, 1_048_576)
    )
    query_threads_max: int = _setting(4, "Most threads a `royalty sql` query runs on.", (1, 256))

    @classmethod
    def descriptions(cls) -> dict[str, str]:
        return {name: info.description or "" for name, info in cls.model_fields.items()}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Highest first: flags (init arguments), ROYALTY_* env, deprecated env names, the TOML file.
        return init_settings, env_settings, _DeprecatedEnvSource(settings_cls), _TomlSource(settings_cls)

    @field_validator("registry_sources")
    @classmethod
    def _registry_event_types(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        unknown = sorted(set(value) - set(registry_types))
        if unknown:
            raise ValueError(f"keys {unknown} are not registry event types; use {list(registry_types)}")
        return value

    @field_validator("topics", "reversal_sources", "holder_excluded", mode="before")
    @classmethod
    def _split_topics(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @model_validator(mode="before")
    @classmethod
    def _empty_is_unset(cls, values: Any) -> Any:
        """An empty value (`ROYALTY_METRICS_PORT=`) unsets an optional setting, as it always has."""
        if not isinstance(values, dict):
            return values
        optional = {name for name, info in cls.model_fields.items() if not info.is_required() and info.default is None}
        return {key: (None if value == "" and key in optional else value) for key, value in values.items()}


def _bounds_of(info: Any) -> tuple[int, int] | None:
    low = next((item.ge for item in info.metadata if isinstance(item, Ge)), None)
    high = next((item.le for item in info.metadata if isinstance(item, Le)), None)
    return None if low is None or high is None else (low, high)


# Inclusive bounds of the numeric settings, from their field constraints.
setting_bounds: dict[str, tuple[int, int]] = {
    name: bounds for name, info in Settings.model_fields.items() if (bounds := _bounds_of(info)) is not None
}


class _TomlSource(PydanticBaseSettingsSource):
    """The TOML file's table (already read and checked by `load_settings`)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_toml_table.get() or {})


class _DeprecatedEnvSource(PydanticBaseSettingsSource):
    """ROYALTY_<OLD NAME> of a renamed setting, below ROYALTY_<NEW NAME>, with a warning."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values = {}
        for old, new in deprecated_settings.items():
            old_env, new_env = env_prefix + old.upper(), env_prefix + new.upper()
            if old_env in os.environ:
                _warn(f"{old_env} is deprecated; set {new_env} (setting `{new}`) instead")
                if new_env not in os.environ:
                    values[new] = os.environ[old_env]
        return values


def load_settings(flags: dict[str, Any] | None = None, config_path: str | None = None) -> Settings:
    """Settings from the defaults, the TOML file, the environment and `flags` (None = not given)."""
    path = config_path or os.environ.get(env_prefix + "CONFIG")
    if path is not None and not Path(path).is_file():
        raise ConfigError(f"configuration file `{path}` does not exist (from --config or {env_prefix}CONFIG)")
    path = path or (config_file_default if Path(config_file_default).is_file() else None)
    table = _read_toml(path) if path is not None else {}
    given = _renamed(
        {key.replace("-", "_"): value for key, value in (flags or {}).items() if value is not None}, "flags"
    )
    _check_known(given, "flags")
    _warn_unknown_env()
    token = _toml_table.set(table)
    try:
        settings = Settings(**given)
    except ValidationError as error:
        raise _config_error(error, given, table, path) from None
    finally:
        _toml_table.reset(token)
    _warn_secret_flags(flags or {})
    return settings


def _read_toml(path: str) -> dict[str, Any]:
    with open(path, "rb") as handle:
        try:
            table = tomllib.load(handle)
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"configuration file `{path}` is not valid TOML: {error}") from error
    table = _renamed({key.replace("-", "_"): value for key, value in table.items()}, f"file `{path}`")
    _check_known(table, f"file `{path}`")
    return table


def _renamed(values: dict[str, Any], origin: str) -> dict[str, Any]:
    """`values` with each deprecated name replaced by its new one (which wins when both are given), warned."""
    values = dict(values)
    for old, new in deprecated_settings.items():
        if old in values:
            _warn(f"setting `{old}` in {origin} is deprecated; name it `{new}`")
            values.setdefault(new, values.pop(old))
    return values


def _check_known(values: dict[str, Any], origin: str) -> None:
    for name in values:
        if name not in Settings.model_fields:
            known = ", ".join(sorted(Settings.model_fields))
            raise ConfigError(f"unknown setting `{name}` in {origin}; known settings: {known}")


def _warn_unknown_env() -> None:
    """A ROYALTY_* variable close to a setting's name is likely a typo, so it is named; others are not ours."""
    names = [env_prefix + name.upper() for name in [*Settings.model_fields, *deprecated_settings]]
    for variable in os.environ:
        if not variable.startswith(env_prefix) or variable in names or variable[len(env_prefix) :] in _other_env_names:
            continue
        close = difflib.get_close_matches(variable, names, n=1, cutoff=0.85)
        if close:
            _warn(f"{variable} is not a setting and is ignored; did you mean {close[0]}?")


def _origin(name: str, flags: dict[str, Any], table: dict[str, Any], path: str | None) -> str:
    if name in flags:
        return "flags"
    if env_prefix + name.upper() in os.environ:
        return f"environment ({env_prefix}{name.upper()})"
    old = [env_prefix + old.upper() for old, new in deprecated_settings.items() if new == name]
    if old and old[0] in os.environ:
        return f"environment ({old[0]})"
    return f"file `{path}`" if name in table else "defaults"


def _config_error(
    error: ValidationError, flags: dict[str, Any], table: dict[str, Any], path: str | None
) -> ConfigError:
    """The first problem as one line; an out-of-bounds value names its bounds."""
    problem = error.errors(include_url=False)[0]
    name = str(problem["loc"][0]) if problem["loc"] else "?"
    if name in setting_bounds and problem["type"] in ("greater_than_equal", "less_than_equal"):
        low, high = setting_bounds[name]
        return ConfigError(f"setting `{name}` is {int(problem['input']):,}; it must be from {low:,} to {high:,}")
    if problem["type"] == "extra_forbidden":
        known = ", ".join(sorted(Settings.model_fields))
        return ConfigError(f"unknown setting `{name}`; known settings: {known}")
    info = Settings.model_fields.get(name)
    kind = info.annotation if info is not None else "?"
    shown = f" is {problem['input']!r}," if name in setting_bounds else ""  # numbers only: a string may be a secret
    return ConfigError(
        f"setting `{name}` from {_origin(name, flags, table, path)}{shown} not a valid {kind}: {problem['msg']}"
    )


def _warn(message: str) -> None:
    sys.stderr.write(f"warning: {message}\n")


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
