"""Typed settings from environment variables, validated when a service starts.

Each service subclasses ServiceSettings with its own env prefix (OMNI_IDENTITY_, OMNI_PROFILE_ …), builds it
once in main and passes it in. Telemetry is configured separately from the standard OTEL_* variables.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from omni_kit.bus.envelope import DEFAULT_MAX_ENVELOPE_BYTES
from omni_kit.bus.inbox import DEFAULT_INBOX_RETENTION_S, MIN_INBOX_RETENTION_S


class ServiceSettings(BaseSettings):
    """What every service needs: its database, the event log and where to listen."""

    # A refused setting is logged at start: the error names the field and why, never the value, which may be
    # a password in a URL or a signing secret (subclasses' configs keep this: pydantic merges them).
    model_config = SettingsConfigDict(extra="ignore", frozen=True, hide_input_in_errors=True)

    database_url: str = Field(
        description="SQLAlchemy URL of the service's own database (postgresql+asyncpg://…)."
    )
    nats_url: str = Field(description="NATS server URL(s), comma-separated, e.g. nats://127.0.0.1:4222.")
    grpc_host: str = Field("0.0.0.0", description="Address the gRPC server binds.")
    grpc_port: int = Field(0, ge=0, le=65535, description="Port of the gRPC server; 0 picks a free one.")
    db_pool_size: int = Field(20, ge=1, le=200, description="Connections kept in the database pool.")
    db_statement_timeout_ms: int = Field(30_000, ge=100, description="Statement timeout for every query.")
    shutdown_grace_s: float = Field(10.0, ge=0, description="How long in-flight calls may finish on SIGTERM.")
    db_health_interval_s: float = Field(
        1.0,
        gt=0,
        description="How often the database is probed; health is NOT_SERVING while it does not answer.",
    )
    outbox_poll_interval_s: float = Field(0.5, gt=0, description="Outbox relay poll interval when idle.")
    outbox_max_envelope_bytes: int = Field(
        DEFAULT_MAX_ENVELOPE_BYTES,
        ge=4096,
        description="The largest event staged; a request making a larger one is refused (INVALID_ARGUMENT). "
        "Lowered at start to the NATS server's max_payload less 4 KiB for headers, when that is smaller.",
    )
    inbox_retention_s: int = Field(
        DEFAULT_INBOX_RETENTION_S,
        ge=MIN_INBOX_RETENTION_S,
        description="How long applied event ids are remembered (at least twice the stream's 7-day max age); "
        "an event older than that is dead-lettered, never applied twice.",
    )
    inbox_purge_interval_s: float = Field(
        600.0, gt=0, description="How often each consumer forgets applied event ids past the retention."
    )
    jobs_poll_interval_s: float = Field(
        1.0,
        gt=0,
        description="The longest the job worker sleeps: jobs scheduled by other replicas are seen this late "
        "(its own wake it at once).",
    )
    consumer_max_deliver: int = Field(
        5, ge=1, description="Deliveries of an event before it is dead-lettered."
    )
    consumer_backoff_s: tuple[float, ...] = Field(
        (0.2, 1.0, 5.0, 15.0), description="Delays before redelivering a failed event."
    )
    event_namespace: str = Field(
        "omni",
        pattern=r"^[a-z][a-z0-9_]{0,30}$",
        description="Prefix of event subjects and streams; every service of one deployment shares it.",
    )
    nats_stream_replicas: int = Field(
        1, ge=1, le=5, description="Replicas of the JetStream streams (3 in a cluster)."
    )
    migrate_on_start: bool = Field(False, description="Apply migrations before serving (the embedded run).")

    # Transport security (README "Security"). Off by default: the laptop run is plaintext on loopback.
    tls_cert_file: Path | None = Field(
        None,
        description="PEM certificate (chain) of this service: the gRPC server serves TLS with it, and its "
        "clients present it (mTLS). Read again when the file changes.",
    )
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file.")
    tls_ca_file: Path | None = Field(
        None,
        description="PEM CA bundle the other side is verified against: the servers this service calls, "
        "and the client certificates of its callers.",
    )
    tls_require_client_cert: bool = Field(
        False, description="Refuse connections without a client certificate signed by tls_ca_file (mTLS)."
    )
    http_tls_cert_file: Path | None = Field(
        None,
        description="PEM certificate (chain) of the service's HTTP endpoint (profile's Segment intake, the "
        "gateway's links): it serves HTTPS with it. Read again when the file changes.",
    )
    http_tls_key_file: Path | None = Field(None, description="PEM private key of http_tls_cert_file.")
    http_plaintext: bool = Field(
        False,
        description="Serve the HTTP endpoints without TLS even when the gRPC port has a certificate (which "
        "they use otherwise, without http_tls_*): for TLS ended in front of them.",
    )
    grpc_health_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="A plaintext port answering only grpc.health.v1 (for Kubernetes' gRPC probes, which "
        "cannot speak TLS); none by default.",
    )
    rate_limit_per_s: float | None = Field(
        None,
        gt=0,
        description="Calls a second each client (the authenticated caller, or the peer's address without "
        "authorisation) may make on average; over it, RESOURCE_EXHAUSTED with a RetryInfo. Off when unset.",
    )
    rate_limit_burst: float | None = Field(
        None, ge=1, description="Calls a client may make at once (default: one second's worth, at least 1)."
    )
    rate_limits: dict[str, float] = Field(
        default_factory=dict,
        description='Per-client rates over rate_limit_per_s, as JSON {"<client>": calls a second}; 0 is '
        "unlimited (e.g. the other services calling this one).",
    )
    tls_reload_interval_s: float = Field(
        1.0, ge=0, description="How often, at most, the certificate files are checked for a change."
    )
    # NATS: TLS (tls:// URLs) and the service's own credentials. Off by default.
    nats_tls_ca_file: Path | None = Field(
        None, description="PEM CA the NATS server's certificate is verified against."
    )
    nats_tls_cert_file: Path | None = Field(
        None, description="PEM client certificate presented to NATS (a server that verifies clients)."
    )
    nats_tls_key_file: Path | None = Field(None, description="PEM private key of nats_tls_cert_file.")
    nats_credentials_file: Path | None = Field(
        None, description="NATS credentials (.creds: the user's JWT and NKey seed) of this service."
    )
    nats_user: str | None = Field(None, description="NATS user name of this service (with nats_password).")
    nats_password: SecretStr | None = Field(None, description="NATS password of nats_user.")
    # Authentication and authorisation by the scope table (protos/omni/scopes.yaml). Off by default.
    auth_enabled: bool = Field(
        False,
        description="Check every call's credentials and scope (health checks and reflection stay open).",
    )
    auth_jwks_file: Path | None = Field(
        None, description="JWKS (JSON) of the keys bearer tokens are signed with; read again when it changes."
    )
    auth_jwt_issuer: str | None = Field(None, description="The `iss` every bearer token must carry, if set.")
    auth_jwt_audience: str | None = Field(
        None, description="The `aud` every bearer token must carry, if set."
    )
    auth_cert_scopes: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Scopes of client-certificate identities (common name or DNS name), JSON; added to the "
        "scope table's `callers` (our services' least privilege), replacing an entry of the same name.",
    )
    auth_reflection_open: bool = Field(True, description="Answer reflection without credentials.")
    client_token_file: Path | None = Field(
        None,
        description="A bearer token this service sends on its calls to other services (its identity when "
        "it has no client certificate); read again when it changes.",
    )

    @field_validator("database_url")
    @classmethod
    def _asyncpg_url(cls, value: str) -> str:
        if not value.startswith("postgresql+asyncpg://"):
            raise ValueError("must be a postgresql+asyncpg:// URL")
        return value

    @field_validator("nats_url")
    @classmethod
    def _nats_url(cls, value: str) -> str:
        for url in value.split(","):
            if not url.strip().startswith(("nats://", "tls://")):
                raise ValueError("must be nats:// or tls:// URLs, comma-separated")
        return value

    @model_validator(mode="after")
    def _tls_complete(self) -> ServiceSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if (self.http_tls_cert_file is None) != (self.http_tls_key_file is None):
            raise ValueError("http_tls_cert_file and http_tls_key_file go together")
        if self.tls_require_client_cert and (self.tls_cert_file is None or self.tls_ca_file is None):
            raise ValueError("tls_require_client_cert needs tls_cert_file, tls_key_file and tls_ca_file")
        return self

    @property
    def nats_servers(self) -> list[str]:
        """The NATS server URLs as a list."""
        return [url.strip() for url in self.nats_url.split(",")]
