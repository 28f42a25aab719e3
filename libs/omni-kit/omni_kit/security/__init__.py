"""Transport security, authentication and authorisation for every service, configured by ServiceSettings.

The runtime builds the server's side (TLS credentials and the auth interceptor) from the settings; a
service's clients get theirs as `runtime.client_security`, passed to omni_kit.grpc_client.channel.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from omni_kit.security.auth import (
    Authenticator,
    AuthInterceptor,
    BearerToken,
    JwksKeys,
    Principal,
    ScopeTable,
    TokenInterceptor,
    current_principal,
    grants,
)
from omni_kit.security.nats_users import inbox_prefix
from omni_kit.security.tls import (
    ReloadingChannel,
    TlsFiles,
    channel_credentials,
    http_ssl_context,
    server_credentials,
)
from omni_kit.settings import ServiceSettings

__all__ = [
    "AuthInterceptor",
    "Authenticator",
    "BearerToken",
    "ClientSecurity",
    "JwksKeys",
    "Principal",
    "ReloadingChannel",
    "ScopeTable",
    "TlsFiles",
    "TokenInterceptor",
    "auth_interceptor",
    "channel_credentials",
    "current_principal",
    "grants",
    "http_ssl_context",
    "http_tls",
    "nats_security",
    "server_credentials",
    "server_tls",
]


def server_tls(settings: ServiceSettings) -> grpc.ServerCredentials | None:
    """The server port's TLS credentials, None for plaintext (no certificate configured)."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    return server_credentials(
        TlsFiles(settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file),
        require_client_cert=settings.tls_require_client_cert,
        check_interval_s=settings.tls_reload_interval_s,
    )


def http_tls(settings: ServiceSettings) -> ssl.SSLContext | None:
    """The SSL context of the service's HTTP endpoints (and the gateway's bounce SMTP STARTTLS): the HTTP
    certificate when one is configured, else the gRPC port's certificate when TLS is on (unless
    http_plaintext); read again when the files change. None for plain HTTP."""
    if settings.http_tls_cert_file is not None and settings.http_tls_key_file is not None:
        files = TlsFiles(settings.http_tls_cert_file, settings.http_tls_key_file)
    elif (
        settings.tls_cert_file is not None
        and settings.tls_key_file is not None
        and not settings.http_plaintext
    ):
        files = TlsFiles(settings.tls_cert_file, settings.tls_key_file)
    else:
        return None
    return http_ssl_context(files, check_interval_s=settings.tls_reload_interval_s)


def nats_security(settings: ServiceSettings, service: str | None = None) -> dict[str, Any]:
    """The NATS client's TLS and credentials (nats.connect keyword arguments); none when not configured.
    With the service's name, its connection uses the service's own inbox prefix, the only one its NATS user
    may subscribe to (omni_kit.security.nats_users)."""
    options: dict[str, Any] = {}
    if service is not None:
        options["inbox_prefix"] = inbox_prefix(service)
    if settings.nats_tls_ca_file is not None or settings.nats_tls_cert_file is not None:
        context = ssl.create_default_context(
            cafile=None if settings.nats_tls_ca_file is None else str(settings.nats_tls_ca_file)
        )
        if settings.nats_tls_cert_file is not None and settings.nats_tls_key_file is not None:
            context.load_cert_chain(settings.nats_tls_cert_file, settings.nats_tls_key_file)
        options["tls"] = context
    if settings.nats_credentials_file is not None:
        options["user_credentials"] = str(settings.nats_credentials_file)
    if settings.nats_user is not None:
        options["user"] = settings.nats_user
        if settings.nats_password is not None:
            options["password"] = settings.nats_password.get_secret_value()
    return options


def auth_interceptor(settings: ServiceSettings, table: ScopeTable | None = None) -> AuthInterceptor | None:
    """The interceptor checking every call's scope, None when authorisation is off."""
    if not settings.auth_enabled:
        return None
    table = table or ScopeTable.load()
    cert_scopes: dict[str, frozenset[str]] = dict(table.callers)
    cert_scopes.update({name: frozenset(scopes) for name, scopes in settings.auth_cert_scopes.items()})
    authenticator = Authenticator(
        jwks=None if settings.auth_jwks_file is None else JwksKeys(settings.auth_jwks_file),
        issuer=settings.auth_jwt_issuer,
        audience=settings.auth_jwt_audience,
        cert_scopes=cert_scopes,
    )
    return AuthInterceptor(table, authenticator, reflection_open=settings.auth_reflection_open)


@dataclass(frozen=True)
class ClientSecurity:
    """How a service's channels reach the others: over TLS (verifying the server against ca_file, and
    presenting the service's own certificate when it has one), and with its bearer token when it has one."""

    tls: TlsFiles | None = None
    ca_file: Path | None = None
    token: BearerToken | None = None
    reload_interval_s: float = 1.0

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> ClientSecurity:
        """The client side of a service's settings: its certificate, its CA, its token."""
        tls = None
        if settings.tls_cert_file is not None and settings.tls_key_file is not None:
            tls = TlsFiles(settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file)
        return cls(
            tls=tls,
            ca_file=settings.tls_ca_file,
            token=None if settings.client_token_file is None else BearerToken(settings.client_token_file),
            reload_interval_s=settings.tls_reload_interval_s,
        )

    @property
    def secure(self) -> bool:
        """Whether channels use TLS (a certificate, or at least a CA to verify servers against)."""
        return self.tls is not None or self.ca_file is not None
