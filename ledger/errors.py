"""Errors of the ledger package. Transient ones may be retried; the others may not."""

import errno as errno_codes

from ledger.redact import redact
from schemas.errors import RoyaltyError


class LedgerError(RoyaltyError):
    """Base of every ledger error."""

    transient = False
    # What a service that retries this error says is failing, in its log lines.
    failing = "ledger append failed"


class LedgerBusyError(LedgerError):
    """The catalog stayed locked by other writers past the retry bound; try again later."""

    transient = True

    def __init__(self, location: str, attempts: int, last_error: str) -> None:
        self.location = location = redact(location)
        last_error = redact(last_error)
        self.attempts = attempts
        super().__init__(
            f"ledger `{location}` stayed busy after {attempts} attempts (last error: {last_error}); "
            "other writers hold the catalog: retry later or add fewer concurrent writers"
        )


class LedgerCatalogUnavailableError(LedgerError):
    """The catalog database cannot be reached (PostgreSQL down, network cut); nothing was written."""

    transient = True
    failing = "ledger catalog unreachable"

    def __init__(self, location: str, what: str, error: str) -> None:
        self.location = location = redact(location)
        error = redact(error)
        self.what = what
        super().__init__(
            f"ledger `{location}`: catalog unreachable during {what} ({error}); nothing was written. "
            "Check that the catalog database is running and reachable; retrying is safe"
        )


class LedgerStorageError(LedgerError):
    """A data file could not be written (disk full, read-only, permissions); nothing was committed."""

    transient = True
    failing = "ledger storage failing"

    def __init__(self, path: str, errno: int | None, reason: str) -> None:
        self.path = path
        self.errno = errno
        self.errno_name = _errno_name(errno)
        super().__init__(
            f"cannot write ledger data file `{path}`: [{self.errno_name}] {reason}; nothing was committed. "
            "Free space or restore write access to the ledger's data path; retrying the same batch is safe"
        )


def _errno_name(errno: int | None) -> str:
    """`ENOSPC` for 28: the name an operator searches for."""
    return errno_codes.errorcode.get(errno, f"errno {errno}") if errno is not None else "no errno"


class LedgerOffsetsFencedError(LedgerError):
    """Another writer already stored offsets past this batch's start: this batch is stale."""

    def __init__(self, topic: str, partition: int, stored_offset: int, batch_first_offset: int) -> None:
        self.topic = topic
        self.partition = partition
        self.stored_offset = stored_offset
        self.batch_first_offset = batch_first_offset
        super().__init__(
            f"partition `{topic}`/{partition}: the ledger already holds offsets up to {stored_offset}, "
            f"but this batch starts at {batch_first_offset}; another consumer took the partition. "
            "The batch was not written: seek to the ledger's offsets and read again"
        )


class LedgerReadOnlyError(LedgerError):
    """A write was attempted through a read-only connection."""

    def __init__(self, statement: str) -> None:
        self.statement = statement
        super().__init__(
            f"the ledger is opened read-only and refuses writes: {statement.strip()[:120]!r}. "
            "Analysts read; only `royalty ingest` and the settlement job write"
        )


class LedgerNotFoundError(LedgerError):
    """The ledger location holds no ledger, and a reader cannot create one."""

    def __init__(self, location: str) -> None:
        self.location = location = redact(location)
        super().__init__(f"no ledger at `{location}`; create one with `royalty ingest` (or check --lake)")


class LedgerLocationError(LedgerError):
    """A new embedded ledger cannot be made where it was asked for (a file is in the way, no permission)."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path = redact(path)
        super().__init__(
            f"cannot create a ledger at `{path}`: {problem}; give --lake a folder (new or holding a ledger) "
            "or a PostgreSQL catalog URL"
        )


class LedgerFormatError(LedgerError):
    """The ledger is in another format than this code reads and writes (migrate or upgrade)."""


class LedgerDataPathError(LedgerError):
    """The catalog records its data files elsewhere than the data path this ledger was opened with."""

    def __init__(self, location: str, recorded: str, given: str) -> None:
        self.location = location
        self.recorded = recorded
        self.given = given
        super().__init__(
            f"ledger `{location}` records its data files at `{recorded}`, not at `{given}`: give "
            f"--data-path {recorded} (or ROYALTY_DATA_PATH). If the files were moved to `{given}`, "
            "docs/operations.md (Backup, restore and relocation) says how to record the new place"
        )


class LedgerIntegrityError(LedgerError):
    """The stored ledger is not what was written: a file changed, vanished, or rows were removed."""


class LedgerDataFileMissingError(LedgerIntegrityError):
    """Data files the catalog lists are gone from the data folder: what they held cannot be read."""

    def __init__(self, paths: list[str], what: str) -> None:
        self.paths = paths
        self.what = what
        shown = ", ".join(f"`{path}`" for path in paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
        super().__init__(
            f"{what}: {len(paths)} data file(s) the ledger lists are missing: {shown}; nothing was written or sent. "
            "Restore them from a backup of the data folder, then run `royalty verify` (it names every missing or "
            "changed file) and run this again; docs/operations.md, 'A data file is missing'. No flag overrides this"
        )


class QueryTimeoutError(LedgerError):
    """A read-only query ran past its time limit and was interrupted; nothing was changed."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        super().__init__(
            f"the query ran past {timeout_s:g} s and was stopped (setting `query_s_max`); narrow it "
            "(a date range, fewer columns) or raise --timeout-s"
        )
