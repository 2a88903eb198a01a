"""Errors of the ingest package."""

from schemas.errors import RoyaltyError


class IngestError(RoyaltyError):
    """Base of every ingest error."""


class IngestConfigError(IngestError):
    """The service cannot start with these settings."""


class IngestLedgerFailingError(IngestError):
    """The service stopped while the ledger kept refusing a batch (stop requested, or failing too long)."""

    def __init__(self, why: str, messages: int, failing_s: float, error: Exception) -> None:
        self.why = why
        self.messages = messages
        self.failing_s = failing_s
        self.error = error
        # Transient when the ledger kept failing with transient errors (a supervisor restarting it may find the
        # catalog back); not when the ledger refused the batch with an error retrying cannot cure.
        self.transient = bool(getattr(error, "transient", False))
        failing = (
            f"while the ledger had been failing for {failing_s:.0f} s"
            if self.transient
            else "because the ledger refused the batch with an error that retrying cannot cure (not retried)"
        )
        super().__init__(
            f"ingest stopped {why} {failing}; the last batch ({messages} messages) was not committed and is read "
            f"again from the ledger's offsets on restart. Last error: {error}"
        )


class IngestSourceRacedError(IngestError):
    """Another process stored positions of a file source this one was reading: two backfills of one file."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        super().__init__(
            f"another process stored positions of file source(s) {', '.join(f'`{k}`' for k in keys)} while this one "
            "read them (the same file ingested twice at once); this process's last batch was not written. "
            "Let the other process finish, then run this command again: it resumes after what is stored"
        )


class IngestBrokerUnreachableError(IngestError):
    """No broker of `bootstrap_servers` answered since the service started, for `waited_s` seconds."""

    transient = True

    def __init__(self, bootstrap_servers: str, waited_s: float, login: str | None = None) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.waited_s = waited_s
        # With SASL, a broker that refuses the login closes the connection: to the client, it did not answer.
        credentials = (
            f", and that it accepts ingest's login ({login}: kafka_sasl_username, ROYALTY_KAFKA_SASL_PASSWORD; the "
            "broker's log names a failed authentication)"
            if login
            else ""
        )
        super().__init__(
            f"no Kafka broker answered at `{bootstrap_servers}` for {waited_s:.0f} s since start; check "
            f"--bootstrap-servers (ROYALTY_BOOTSTRAP_SERVERS) and that the broker runs{credentials}. Nothing was "
            "read; setting `broker_unreachable_s_max` sets how long to wait"
        )
