"""Where the ledger's Parquet files are: a local folder or an S3 bucket (`s3://bucket/prefix/`).

DuckLake reads and writes S3 through DuckDB's httpfs extension (from the `duckdb-ext-httpfs` wheel) with a
temporary DuckDB secret made on each connection (`secret_statements`); the files the ledger handles itself
(an append's Parquet files and their checksums, `verify`'s read-back and orphan listing, compaction's
checksum, backup's copies) go through `DataStore`, which is a local folder or `pyarrow.fs.S3FileSystem`.
Polars scans get the same credentials (`polars_storage_options`).

The endpoint and credentials come from the settings (`s3_*`, royalty/config.py; the CLI calls
`configure`) or else from the standard AWS variables: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_SESSION_TOKEN, AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, AWS_REGION / AWS_DEFAULT_REGION. The secret key
and session token are registered with `ledger.redact`, so no message, log line or error shows them.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeVar
from urllib.parse import urlsplit

from ledger.errors import LedgerError, LedgerStorageError
from ledger.redact import redact, remember_secret

if TYPE_CHECKING:
    import pyarrow as pa

T = TypeVar("T")

s3_scheme = "s3://"
region_default = "us-east-1"
# How long one request to the object store may take to connect and to answer, and how often pyarrow
# retries it: a stopped server fails an append in seconds (ingest then retries the whole batch with
# backoff), not after pyarrow's default of minutes.
s3_connect_timeout_s = 5.0
s3_request_timeout_s = 30.0
s3_request_attempts_max = 3
_hash_chunk_bytes = 8 * 1024 * 1024
_write_buffer_bytes = 1024 * 1024  # what `write_from` gathers before each write to its file
# The S3 errors that say the credentials are wrong: retrying cannot cure them.
_refused_markers = (
    "invalidaccesskeyid",
    "invalid_access_key_id",
    "signaturedoesnotmatch",
    "signature_does_not_match",
    "access denied",
    "accessdenied",
    "access_denied",
    "forbidden",
    "403",
    "invalidtoken",
    "expiredtoken",
)


class ObjectStoreRefusedError(LedgerError):
    """The object store refused the credentials or the bucket (not retried)."""

    def __init__(self, data_path: str, reason: str) -> None:
        super().__init__(
            f"object storage refused access to the ledger's data path `{data_path}` ({redact(reason)}); check "
            "the access key and secret (ROYALTY_S3_ACCESS_KEY_ID / ROYALTY_S3_SECRET_ACCESS_KEY or "
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), the endpoint and the bucket (docs/operations.md)"
        )


class ObjectStoreUnavailableError(LedgerStorageError):
    """The object store could not be reached or failed a request (down, restarting, cut off): transient."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.errno = None
        self.errno_name = "no errno"
        LedgerError.__init__(
            self,
            f"object storage failed for `{path}` ({redact(reason)}); nothing was committed. Check that the S3 "
            "endpoint is up and reachable; retrying is safe",
        )


@dataclass(frozen=True)
class S3Config:
    """The endpoint and credentials of the object store holding an `s3://` data path."""

    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    # `http://host:port` or `https://host` for an S3-compatible server; None: AWS S3 itself.
    endpoint_url: str | None = None
    region: str = region_default
    # Path-style URLs (`host/bucket/key`) for a server of one's own, virtual-host style for AWS.
    url_style: str | None = None

    @property
    def path_style(self) -> bool:
        return self.url_style == "path" if self.url_style else self.endpoint_url is not None

    @property
    def endpoint_host(self) -> str | None:
        """`host:port` of the endpoint (DuckDB's and pyarrow's form), None for AWS S3."""
        if self.endpoint_url is None:
            return None
        parts = urlsplit(self.endpoint_url if "://" in self.endpoint_url else f"https://{self.endpoint_url}")
        return parts.netloc

    @property
    def use_ssl(self) -> bool:
        return self.endpoint_url is None or not self.endpoint_url.startswith("http://")


_configured: S3Config | None = None
_configured_lock = threading.Lock()


def configure(
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    endpoint_url: str | None = None,
    region: str | None = None,
    url_style: str | None = None,
) -> S3Config:
    """Set this process's S3 configuration: each value given here, else the AWS variable's; return it."""
    config = from_environment()
    config = S3Config(
        access_key_id or config.access_key_id,
        secret_access_key or config.secret_access_key,
        config.session_token,
        endpoint_url or config.endpoint_url,
        region or config.region,
        url_style or config.url_style,
    )
    remember_secret(config.secret_access_key)
    remember_secret(config.session_token)
    global _configured
    with _configured_lock:
        _configured = config
    return config


def from_environment() -> S3Config:
    """The S3 configuration of the standard AWS environment variables."""
    environ = os.environ
    config = S3Config(
        environ.get("AWS_ACCESS_KEY_ID") or None,
        environ.get("AWS_SECRET_ACCESS_KEY") or None,
        environ.get("AWS_SESSION_TOKEN") or None,
        environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL") or None,
        environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or region_default,
    )
    remember_secret(config.secret_access_key)
    remember_secret(config.session_token)
    return config


def current() -> S3Config:
    """The configuration `configure` set, else the AWS environment's."""
    with _configured_lock:
        configured = _configured
    return configured if configured is not None else from_environment()


def is_s3(path: str) -> bool:
    return path.startswith(s3_scheme)


def secret_statements(data_path: str) -> list[str]:
    """DuckDB statements that let a connection read and write `data_path` (none for a local folder).

    Run before the ATTACH: DuckLake writes and reads the data files through them.
    """
    if not is_s3(data_path):
        return []
    config = current()
    options = ["TYPE s3", f"REGION '{_quote(config.region)}'"]
    if config.access_key_id:
        options += [f"KEY_ID '{_quote(config.access_key_id)}'", f"SECRET '{_quote(config.secret_access_key or '')}'"]
    if config.session_token:
        options.append(f"SESSION_TOKEN '{_quote(config.session_token)}'")
    if config.endpoint_host:
        options.append(f"ENDPOINT '{_quote(config.endpoint_host)}'")
    options += [f"URL_STYLE '{'path' if config.path_style else 'vhost'}'", f"USE_SSL {str(config.use_ssl).lower()}"]
    return ["LOAD httpfs", f"CREATE OR REPLACE TEMPORARY SECRET royalty_data ({', '.join(options)})"]


def secret_statements_redacted(data_path: str) -> str:
    """The CREATE SECRET of `secret_statements` with the secret key and token masked, to print."""
    statements = secret_statements(data_path)
    if not statements:
        return ""
    config = current()
    text = statements[-1]
    for secret in (config.secret_access_key, config.session_token):
        if secret:
            text = text.replace(f"'{_quote(secret)}'", "'***'")
    return text


def polars_storage_options(path: str) -> dict[str, str] | None:
    """polars' `storage_options` for reading `path` (None for a local file)."""
    if not is_s3(path):
        return None
    config = current()
    options = {"aws_region": config.region, "aws_virtual_hosted_style_request": str(not config.path_style).lower()}
    if config.access_key_id:
        options["aws_access_key_id"] = config.access_key_id
        options["aws_secret_access_key"] = config.secret_access_key or ""
    if config.session_token:
        options["aws_session_token"] = config.session_token
    if config.endpoint_url:
        endpoint = config.endpoint_url if "://" in config.endpoint_url else f"https://{config.endpoint_url}"
        options["aws_endpoint_url"] = endpoint
        options["aws_allow_http"] = str(endpoint.startswith("http://")).lower()
    return options


@dataclass(frozen=True)
class StoredFile:
    path: str  # absolute: a local path or `s3://bucket/key`
    size_bytes: int
    modified_at_s: float


class DataStore:
    """The ledger's data path: write a file whole, read it back, list, remove. A local folder here;
    `S3DataStore` for `s3://`. Paths are absolute (the data path, then `main/<table>/...`)."""

    def __init__(self, data_path: str) -> None:
        self.data_path = data_path
        # Files of appends that did not commit whose removal failed (the storage itself failing): removed at a later
        # append (`remove_leftovers`), so a data path read-only for a while leaves no orphan once it is writable.
        self.leftovers: list[str] = []
        self._leftovers_lock = threading.Lock()

    def remove_uncommitted(self, paths: list[str]) -> None:
        """Remove files no commit lists (best effort: the storage may be what failed); keep the rest for later."""
        failed = []
        for path in paths:
            try:
                self.remove(path)
            except OSError:
                failed.append(path)
        if failed:
            with self._leftovers_lock:
                self.leftovers.extend(failed)

    def remove_leftovers(self) -> None:
        """Try again to remove what `remove_uncommitted` could not."""
        with self._leftovers_lock:
            paths, self.leftovers = self.leftovers, []
        if paths:
            self.remove_uncommitted(paths)

    def write(self, path: str, data: bytes | pa.Buffer) -> None:
        """Write `data` at `path` whole or not at all (a temporary file, fsync, rename); `LedgerStorageError`."""

        def fill(temporary: Path) -> None:
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())

        self._replace(path, fill)

    def write_from(
        self, path: str, encode: Callable[[pa.NativeFile], None], streamed: bool = True
    ) -> tuple[int, str]:
        """Write at `path`, whole or not at all as `write`, what `encode(sink)` writes to `sink`; return the file's
        size and SHA-256 (hex). `streamed`: straight into the temporary file and hashed from it (no buffer of the
        whole file in memory), else from one buffer in one write."""
        import pyarrow as pa  # imported where used: this module stays light to import

        if not streamed:
            return self._write_buffered(path, encode)

        def fill(temporary: Path) -> tuple[int, str]:
            with pa.BufferedOutputStream(pa.OSFile(str(temporary), "wb"), _write_buffer_bytes) as sink:
                encode(sink)
            with open(temporary, "rb") as handle:
                digest = hashlib.file_digest(handle, "sha256").hexdigest()
                os.fsync(handle.fileno())
                return os.fstat(handle.fileno()).st_size, digest

        return self._replace(path, fill)

    def _write_buffered(self, path: str, encode: Callable[[pa.NativeFile], None]) -> tuple[int, str]:
        import pyarrow as pa

        sink = pa.BufferOutputStream()
        encode(sink)
        # Arrow's buffer itself, not a bytes copy: on this kind of VM a fresh 64 MB copy cost ~0.6 s of page faults.
        data = sink.getvalue()
        self.write(path, data)
        return data.size, hashlib.sha256(data).hexdigest()

    def _replace(self, path: str, fill: Callable[[Path], T]) -> T:
        """`fill(temporary)` then the rename over `path`; on any failure the temporary file is removed (nothing
        half-written is left), and an `OSError` is raised as `LedgerStorageError`."""
        absolute = Path(path)
        temporary = absolute.with_suffix(".parquet.tmp")
        try:
            absolute.parent.mkdir(parents=True, exist_ok=True)
            result = fill(temporary)
            os.replace(temporary, absolute)
        except BaseException as error:
            # A half-written temporary file would hold on to the very space that ran out.
            with suppress(OSError):
                temporary.unlink(missing_ok=True)
            if not isinstance(error, OSError):
                raise
            path = getattr(error, "filename", None) or str(temporary)
            raise LedgerStorageError(path, error.errno, error.strerror or str(error)) from error
        return result

    def size(self, path: str) -> int | None:
        """The file's size, None when there is no such file."""
        file = Path(path)
        return file.stat().st_size if file.is_file() else None

    def open(self, path: str) -> BinaryIO:
        return open(path, "rb")

    def remove(self, path: str) -> None:
        """Remove the file if it is there."""
        Path(path).unlink(missing_ok=True)

    def walk(self) -> Iterator[StoredFile]:
        """Every file under the data path."""
        for directory, _, names in os.walk(self.data_path):
            for name in names:
                path = Path(directory) / name
                try:
                    stat = path.stat()
                except FileNotFoundError:  # an append's temporary file, renamed meanwhile
                    continue
                yield StoredFile(str(path), stat.st_size, stat.st_mtime)

    def sha256(self, path: str) -> str:
        digest = hashlib.sha256()
        with self.open(path) as handle:
            while chunk := handle.read(_hash_chunk_bytes):
                digest.update(chunk)
        return digest.hexdigest()

    def check(self) -> None:
        """Raise a typed error when the data path cannot be reached now (nothing for a local folder)."""


class S3DataStore(DataStore):
    """An `s3://bucket/prefix/` data path through pyarrow's S3 file system."""

    def __init__(self, data_path: str, config: S3Config | None = None) -> None:
        super().__init__(data_path)
        from pyarrow import fs  # here: only an S3 ledger pays for pyarrow's S3 initialisation

        self._fs = _s3_filesystem(config or current())
        self._file_type = fs.FileType
        self._selector = fs.FileSelector

    @staticmethod
    def _key(path: str) -> str:
        return path.removeprefix(s3_scheme)

    def write(self, path: str, data: bytes | pa.Buffer) -> None:
        # An S3 PUT is atomic: the object is there whole once it returns, or not at all.
        try:
            with self._fs.open_output_stream(self._key(path)) as stream:
                stream.write(data)
        except OSError as error:
            raise ObjectStoreUnavailableError(path, str(error).splitlines()[0]) from error

    def write_from(
        self, path: str, encode: Callable[[pa.NativeFile], None], streamed: bool = True
    ) -> tuple[int, str]:
        return self._write_buffered(path, encode)  # one PUT of the whole object, streamed or not

    def size(self, path: str) -> int | None:
        info = self._fs.get_file_info(self._key(path))
        return info.size if info.type == self._file_type.File else None

    def open(self, path: str) -> BinaryIO:
        return self._fs.open_input_stream(self._key(path))  # type: ignore[return-value]

    def remove(self, path: str) -> None:
        with suppress(FileNotFoundError):
            self._fs.delete_file(self._key(path))

    def walk(self) -> Iterator[StoredFile]:
        selector = self._selector(self._key(self.data_path).rstrip("/"), recursive=True, allow_not_found=True)
        for info in self._fs.get_file_info(selector):
            if info.type == self._file_type.File:
                modified = info.mtime.timestamp() if info.mtime is not None else 0.0
                yield StoredFile(s3_scheme + info.path, info.size, modified)

    def check(self) -> None:
        """List the data path once: `ObjectStoreRefusedError` for refused credentials or a missing bucket,
        `LedgerStorageError` (transient) for an unreachable endpoint."""
        bucket = self._key(self.data_path).split("/", 1)[0]
        try:
            info = self._fs.get_file_info(self._selector(self._key(self.data_path).rstrip("/"), allow_not_found=True))
            del info
            bucket_info = self._fs.get_file_info(bucket)
        except OSError as error:
            message = str(error)
            if any(marker in message.lower() for marker in _refused_markers):
                raise ObjectStoreRefusedError(self.data_path, message.splitlines()[0]) from None
            raise ObjectStoreUnavailableError(self.data_path, message.splitlines()[0]) from None
        if bucket_info.type == self._file_type.NotFound:
            raise ObjectStoreRefusedError(self.data_path, f"bucket `{bucket}` does not exist")


@functools.lru_cache(maxsize=4)
def _s3_filesystem(config: S3Config):  # -> pyarrow.fs.S3FileSystem (one client per configuration)
    from pyarrow import fs

    return fs.S3FileSystem(
        access_key=config.access_key_id,
        secret_key=config.secret_access_key if config.access_key_id else None,
        session_token=config.session_token if config.access_key_id else None,
        region=config.region,
        endpoint_override=config.endpoint_host,
        scheme="https" if config.use_ssl else "http",
        force_virtual_addressing=not config.path_style,
        connect_timeout=s3_connect_timeout_s,
        request_timeout=s3_request_timeout_s,
        retry_strategy=fs.AwsStandardS3RetryStrategy(max_attempts=s3_request_attempts_max),
    )


def file_size(path: str) -> int | None:
    """The size of the data file at `path` (local or `s3://`), None when it is not there."""
    return store_for(path).size(path)


def store_for(data_path: str) -> DataStore:
    """The `DataStore` of a ledger's data path."""
    return S3DataStore(data_path) if is_s3(data_path) else DataStore(data_path)


def _quote(text: str) -> str:
    return text.replace("'", "''")
