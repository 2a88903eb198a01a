"""How the Kafka clients authenticate: SASL (PLAIN, SCRAM-SHA-256/512) and TLS, as kafka-python does.

`KafkaSecurity` holds the settings (`royalty/config.py`, `kafka_*`) and gives the keyword arguments of
kafka-python's clients. Passwords are pydantic `SecretStr`s: their repr and str are `**********`, and
they are revealed only in the arguments handed to kafka-python, never logged or put in an error.
"""

from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from ingest.errors import IngestConfigError

security_protocols = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
sasl_mechanisms = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class KafkaSecurity:
    """The security settings of a Kafka client; the default is a plaintext, unauthenticated connection."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: SecretStr | None = None  # of the client key, when it is encrypted
    ssl_check_hostname: bool = True

    def check(self) -> None:
        """Refuse a combination kafka-python would reject late or silently ignore, saying what to set."""
        if self.protocol not in security_protocols:
            raise IngestConfigError(f"kafka_security_protocol `{self.protocol}` is not one of {security_protocols}")
        sasl = self.protocol.startswith("SASL_")
        if sasl:
            if self.sasl_mechanism not in sasl_mechanisms:
                raise IngestConfigError(
                    f"kafka_security_protocol {self.protocol} needs kafka_sasl_mechanism, one of {sasl_mechanisms}"
                )
            if not self.sasl_username or self.sasl_password is None or not self.sasl_password.get_secret_value():
                raise IngestConfigError(
                    f"kafka_security_protocol {self.protocol} needs kafka_sasl_username and kafka_sasl_password "
                    "(set the password in ROYALTY_KAFKA_SASL_PASSWORD, never on the command line)"
                )
        elif self.sasl_mechanism or self.sasl_username or self.sasl_password is not None:
            raise IngestConfigError(
                f"kafka_sasl_* settings are given but kafka_security_protocol is {self.protocol}: set it to "
                "SASL_SSL (or SASL_PLAINTEXT on a trusted network), or remove them"
            )
        tls_files = (self.ssl_cafile, self.ssl_certfile, self.ssl_keyfile)
        if not self.protocol.endswith("SSL") and any(tls_files):
            raise IngestConfigError(
                f"kafka_ssl_* files are given but kafka_security_protocol is {self.protocol}: set it to SSL or SASL_SSL"
            )
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise IngestConfigError("a client certificate needs both kafka_ssl_certfile and kafka_ssl_keyfile")

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for KafkaConsumer / KafkaProducer / KafkaAdminClient (checked first)."""
        self.check()
        options: dict[str, Any] = {"security_protocol": self.protocol}
        if self.protocol.startswith("SASL_"):
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password.get_secret_value()  # type: ignore[union-attr]
        if self.protocol.endswith("SSL"):
            options["ssl_check_hostname"] = self.ssl_check_hostname
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
                if getattr(self, name):
                    options[name] = getattr(self, name)
            if self.ssl_password is not None:
                options["ssl_password"] = self.ssl_password.get_secret_value()
        return options

    def login(self) -> str | None:
        """The SASL login an error may name (mechanism and user, never the password); None without SASL."""
        if not self.protocol.startswith("SASL_"):
            return None
        return f"{self.sasl_mechanism} as `{self.sasl_username}`"

    def describe(self) -> str:
        """What a log line may say about it: protocol, mechanism and user; never a password."""
        parts = [self.protocol]
        if self.protocol.startswith("SASL_"):
            parts.append(f"{self.sasl_mechanism} as `{self.sasl_username}`")
        if self.ssl_certfile:
            parts.append("client certificate")
        return ", ".join(parts)
