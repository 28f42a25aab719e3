"""The console's settings, from OMNI_CONSOLE_* variables: where it listens, where the five services are, and
the credentials it calls them with."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_ASSETS = Path("node_modules")


class Settings(BaseSettings):
    """What the console needs. It owns no data, so no database and no NATS: just the services' addresses and
    its own identity (a client certificate named ``console`` or a bearer token) with the read scopes it holds."""

    model_config = SettingsConfigDict(
        env_prefix="OMNI_CONSOLE_", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    http_host: str = Field("127.0.0.1", description="Address the console's web server binds.")
    http_port: int = Field(8090, ge=0, le=65535, description="Port of the web server; 0 picks a free one.")
    identity_target: str = Field("127.0.0.1:15051", description="host:port of the identity service.")
    profile_target: str = Field("127.0.0.1:15052", description="host:port of the profile service.")
    segmentation_target: str = Field("127.0.0.1:15053", description="host:port of the segmentation service.")
    decisioning_target: str = Field("127.0.0.1:15054", description="host:port of the decisioning service.")
    gateway_target: str = Field("127.0.0.1:15055", description="host:port of the gateway service.")
    call_timeout_s: float = Field(5.0, gt=0, description="Deadline of each call to a service.")
    default_phone_region: str = Field(
        "US",
        pattern=r"^[A-Z]{2}$",
        description="ISO region a phone number typed without a country code is read in (national formats).",
    )
    scopes: tuple[str, ...] | None = Field(
        None,
        description="The scopes the console's credentials hold (JSON list); by default the scope table's "
        "`console` caller. A page needing a scope the console lacks says so instead of asking.",
    )
    assets_dir: Path = Field(
        DEFAULT_ASSETS,
        description="The npm packages (htmx, vega, vega-lite, vega-embed) installed from package-lock.json.",
    )
    timeline_page_size: int = Field(50, ge=1, le=500, description="Events per page of a person's timeline.")
    message_scan_events: int = Field(
        200,
        ge=0,
        le=500,
        description="How many of a person's latest events are read to list the messages sent to them.",
    )
    tls_cert_file: Path | None = Field(None, description="PEM client certificate (mTLS) of the console.")
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file.")
    tls_ca_file: Path | None = Field(None, description="PEM CA bundle the services are verified against.")
    client_token_file: Path | None = Field(
        None, description="A bearer token sent on every call (the console's identity without a certificate)."
    )

    @model_validator(mode="after")
    def _tls_complete(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        return self
