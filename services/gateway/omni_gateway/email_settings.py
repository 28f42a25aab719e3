"""The settings of email done properly (OMNI_GATEWAY_*): the link endpoint, link tokens, DKIM, bounces.

`EmailSettings` is a mixin of the gateway's `Settings` (`class Settings(ServiceSettings, EmailSettings)`), and
builds the parts from them: `email_links(sender)` and `dkim_signer()`.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from omni_gateway.dkim_signing import DkimSigner
from omni_gateway.email_links import EmailLinks
from omni_gateway.email_message import ascii_domain

log = logging.getLogger(__name__)

__all__ = ["EmailSettings"]


class EmailSettings(BaseSettings):
    """Email settings, from OMNI_GATEWAY_* variables."""

    model_config = SettingsConfigDict(env_prefix="OMNI_GATEWAY_", extra="ignore", frozen=True)

    email_http_host: str = Field(
        "0.0.0.0",
        description="Address the gateway's HTTP endpoint binds: email links (/u, /o, /c), SMS callbacks (/sms).",
    )
    email_http_port: int = Field(
        8089, ge=0, le=65535, description="Port of the gateway's HTTP endpoint; 0 picks a free one."
    )
    email_public_url: str = Field(
        "http://127.0.0.1:8089",
        pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$",
        description="The endpoint's URL as recipients reach it (https://mail.example.com); the base of the "
        "unsubscribe, pixel and click links.",
    )
    email_token_secret: SecretStr | None = Field(
        None,
        description="The secret signing link tokens and return paths (HMAC). Unset: a random one per process, "
        "so links die with it (laptop runs only).",
    )
    email_token_previous_secret: SecretStr | None = Field(
        None, description="The secret before the last rotation: still verifies, never signs."
    )
    email_link_ttl_s: float = Field(
        180 * 86_400, gt=0, description="How long an email's unsubscribe and tracking links work (180 days)."
    )
    email_unsubscribe_mailto: str | None = Field(
        None,
        description="A mailbox for List-Unsubscribe's mailto (optional; the HTTPS one-click URL is always "
        "there).",
    )
    email_tracking: bool = Field(
        True, description="Rewrite marketing HTML links for click tracking, add the pixel."
    )
    email_machine_open_window_s: float = Field(
        10.0, ge=0, description="An open or click this soon after sending is flagged as a machine's."
    )
    dkim_domain: str | None = Field(None, description="The DKIM signing domain (d=); unset: not signed.")
    dkim_selector: str | None = Field(None, description="The DKIM selector (s=).")
    dkim_private_key: SecretStr | None = Field(None, description="The DKIM RSA private key, PEM.")
    dkim_private_key_file: Path | None = Field(None, description="Or a file holding it (a mounted secret).")
    bounce_domain: str | None = Field(
        None, description="Domain of the VERP return path bounces+…@domain; unset: the From address's domain."
    )
    bounce_smtp_host: str = Field("0.0.0.0", description="Address the inbound bounce SMTP endpoint binds.")
    bounce_smtp_port: int = Field(
        2526,
        ge=0,
        le=65535,
        description="Its port (the MX of the bounce domain forwards there); 0: a free one. Not 2525: that is "
        "`make run`'s SMTP sink.",
    )
    bounce_max_bytes: int = Field(
        10 * 1024 * 1024, ge=64 * 1024, description="Largest report accepted (552 above): 10 MiB."
    )

    @model_validator(mode="after")
    def _dkim_complete(self) -> EmailSettings:
        given = [self.dkim_domain, self.dkim_selector, self.dkim_private_key or self.dkim_private_key_file]
        if any(given) and not all(given):
            raise ValueError("DKIM needs dkim_domain, dkim_selector and dkim_private_key (or _file) together")
        return self

    def email_links(self, sender: str) -> EmailLinks:
        """The link tokens and URLs; `sender` (smtp_from) gives the bounce domain when none is set."""
        secret = self.email_token_secret.get_secret_value() if self.email_token_secret else None
        if secret is None:
            log.warning("OMNI_GATEWAY_EMAIL_TOKEN_SECRET is not set: email links only work until a restart")
            secret = secrets.token_urlsafe(32)
        previous = self.email_token_previous_secret
        return EmailLinks(
            secrets=[*([previous.get_secret_value()] if previous else []), secret],
            public_url=self.email_public_url,
            bounce_domain=self.bounce_domain or ascii_domain(sender),
            ttl_s=self.email_link_ttl_s,
            unsubscribe_mailto=self.email_unsubscribe_mailto,
        )

    def dkim_signer(self) -> DkimSigner | None:
        """The DKIM signer, or None when DKIM is not configured."""
        if not (self.dkim_domain and self.dkim_selector):
            return None
        if self.dkim_private_key is not None:
            pem = self.dkim_private_key.get_secret_value().encode()
        elif self.dkim_private_key_file is not None:
            pem = self.dkim_private_key_file.read_bytes()
        else:
            return None
        return DkimSigner(domain=self.dkim_domain, selector=self.dkim_selector, private_key_pem=pem)
