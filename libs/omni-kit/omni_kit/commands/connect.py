"""Where the services are and how to reach them, from OMNI_CLI_* settings (the way services read theirs).

The defaults are the laptop run's ports (`omni run`). With TLS: OMNI_CLI_TLS_CA_FILE verifies the servers,
OMNI_CLI_TLS_CERT_FILE/_KEY_FILE present a client certificate (`omni certs` makes an "operator" one), and
OMNI_CLI_CLIENT_TOKEN_FILE sends a bearer token: the same ClientSecurity every service uses for its calls.
A failed call becomes a CommandError that says which service, where, and what to do.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from omni_kit.errors import status_details
from omni_kit.grpc_client import channel
from omni_kit.security import BearerToken, ClientSecurity, TlsFiles

SERVICE_NAMES = {
    "identity": "omni.identity.v1.IdentityService",
    "profile": "omni.profile.v1.ProfileService",
    "segmentation": "omni.segmentation.v1.SegmentationService",
    "decisioning": "omni.decisioning.v1.DecisioningService",
    "gateway": "omni.gateway.v1.GatewayService",
}


class CommandError(Exception):
    """A failure the command explains to its user and exits with (no traceback)."""


class CliSettings(BaseSettings):
    """Targets and credentials of the command-line client (environment variables OMNI_CLI_*)."""

    model_config = SettingsConfigDict(
        env_prefix="OMNI_CLI_", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    identity_target: str = Field("127.0.0.1:15051", description="host:port of identity.")
    profile_target: str = Field("127.0.0.1:15052", description="host:port of profile.")
    segmentation_target: str = Field("127.0.0.1:15053", description="host:port of segmentation.")
    decisioning_target: str = Field("127.0.0.1:15054", description="host:port of decisioning.")
    gateway_target: str = Field("127.0.0.1:15055", description="host:port of the gateway.")
    tls_ca_file: Path | None = Field(None, description="CA that verifies the servers (turns TLS on).")
    tls_cert_file: Path | None = Field(None, description="client certificate, for servers requiring mTLS.")
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file.")
    client_token_file: Path | None = Field(None, description="a bearer token sent on every call.")
    timeout_s: float = Field(30.0, gt=0, description="deadline of each call, in seconds.")

    @model_validator(mode="after")
    def _tls_complete(self) -> CliSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("OMNI_CLI_TLS_CERT_FILE and OMNI_CLI_TLS_KEY_FILE go together")
        return self

    def target(self, service: str) -> str:
        """host:port of a service by name."""
        return str(getattr(self, f"{service}_target"))

    def security(self) -> ClientSecurity | None:
        """TLS and token, as a service's own client side has them; None for plaintext."""
        tls = None
        if self.tls_cert_file is not None and self.tls_key_file is not None:
            tls = TlsFiles(self.tls_cert_file, self.tls_key_file, self.tls_ca_file)
        token = None if self.client_token_file is None else BearerToken(self.client_token_file)
        if tls is None and self.tls_ca_file is None and token is None:
            return None
        return ClientSecurity(tls=tls, ca_file=self.tls_ca_file, token=token)


def load_settings() -> CliSettings:
    """The settings from the environment, or a CommandError naming what is wrong."""
    try:
        return CliSettings()
    except ValueError as error:
        raise CommandError(f"bad OMNI_CLI_* setting: {error}") from error


@dataclass
class Clients:
    """Channels to the services a command needs, opened lazily and closed together."""

    settings: CliSettings
    _channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)

    def channel(self, service: str) -> grpc.aio.Channel:
        """The channel to a service (by name: identity, profile …)."""
        if service not in self._channels:
            self._channels[service] = channel(
                self.settings.target(service),
                service=SERVICE_NAMES[service],
                timeout_s=self.settings.timeout_s,
                security=self.settings.security(),
            )
        return self._channels[service]

    async def close(self) -> None:
        """Close every channel opened."""
        for opened in self._channels.values():
            await opened.close()
        self._channels.clear()


@contextlib.asynccontextmanager
async def clients(settings: CliSettings | None = None) -> AsyncIterator[Clients]:
    """Clients for the block; failed calls inside it become CommandErrors naming the service."""
    opened = Clients(settings or load_settings())
    try:
        yield opened
    finally:
        await opened.close()


def explain(error: grpc.aio.AioRpcError | grpc.RpcError, service: str, settings: CliSettings) -> CommandError:
    """A failed call turned into a sentence for the terminal."""
    details = status_details(error)
    where = settings.target(service)
    env = f"OMNI_CLI_{service.upper()}_TARGET"
    code = details.code
    if code == grpc.StatusCode.UNAVAILABLE:
        return CommandError(
            f"cannot reach {service} at {where}: {details.message or 'unavailable'}.\n"
            f"Is it running (`omni run` starts everything)? Set {env} if it listens elsewhere."
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return CommandError(
            f"{service} at {where} did not answer within {settings.timeout_s:g} s "
            "(OMNI_CLI_TIMEOUT_S raises the limit)."
        )
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return CommandError(
            f"{service} refused the call ({code.name}): {details.message}.\n"
            "Check OMNI_CLI_CLIENT_TOKEN_FILE / OMNI_CLI_TLS_CERT_FILE and the scopes they carry."
        )
    lines = [f"{service} answered {code.name}: {details.message}"]
    lines += [f"  {v.field}: {v.description}" for v in details.field_violations]
    return CommandError("\n".join(lines))


@contextlib.contextmanager
def calling(service: str, settings: CliSettings) -> Iterator[None]:
    """Turn a failed gRPC call inside the block into a CommandError about `service`."""
    try:
        yield
    except grpc.aio.AioRpcError as error:
        raise explain(error, service, settings) from error
