"""The SMS channel put together from settings: its providers in failover order, the keyword handler they
share and the HTTP callback endpoints, for `main` to hand to the provider registry and the HTTP server.

The gateway's settings hold one `SmsSettings` (e.g. as `sms`, read from `OMNI_GATEWAY_SMS__SMPP__HOST` and so on
with pydantic-settings' nested delimiter, or from a JSON value `OMNI_GATEWAY_SMS='{"smpp": {...}}'`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web
from pydantic import BaseModel, Field, model_validator

from omni.identity.v1 import identity_pb2_grpc
from omni.profile.v1 import profile_pb2_grpc
from omni_gateway.providers.base import ChannelProvider
from omni_gateway.providers.http_sms import HttpSmsProvider, HttpSmsSettings, http_sms_provider
from omni_gateway.providers.smpp import SmppSettings, smpp_provider
from omni_gateway.sms_inbound import sms_callbacks_app
from omni_gateway.sms_keywords import DEFAULT_KEYWORDS, KeywordLanguage, SmsKeywords, keywords_from

__all__ = ["SmsChannel", "SmsSettings", "build_sms"]


class SmsSettings(BaseModel):
    """Which SMS providers the gateway has, in which order they are tried, and the inbound keywords."""

    smpp: SmppSettings | None = Field(None, description="The SMSC, when SMS goes over SMPP.")
    http: HttpSmsSettings | None = Field(None, description="The HTTP SMS vendor account.")
    order: list[str] = Field(
        default_factory=lambda: ["smpp", "http"],
        description="Failover order by setting name (`smpp`, `http`); providers not configured are skipped.",
    )
    keyword_languages: list[str] = Field(
        default_factory=lambda: list(DEFAULT_KEYWORDS),
        description="Languages whose keywords are recognised, in the order they are tried.",
    )
    keywords: dict[str, KeywordLanguage] = Field(
        default_factory=dict, description="Keywords and replies per language, replacing the defaults' entry."
    )

    @model_validator(mode="after")
    def _known_names(self) -> SmsSettings:
        unknown = set(self.order) - {"smpp", "http"}
        if unknown:
            raise ValueError(f"unknown SMS providers in order: {sorted(unknown)}")
        keywords_from(self.keyword_languages, self.keywords)  # every language has keywords
        return self


@dataclass
class SmsChannel:
    """The SMS providers in failover order, the keyword handler and the callback endpoints (None without an
    HTTP vendor), to mount under a prefix of the gateway's HTTP server (`root.add_subapp("/sms", app)`)."""

    providers: list[ChannelProvider] = field(default_factory=list)
    keywords: SmsKeywords | None = None
    callbacks: web.Application | None = None


def build_sms(
    settings: SmsSettings,
    identity: identity_pb2_grpc.IdentityServiceAsyncStub,
    profile: profile_pb2_grpc.ProfileServiceAsyncStub,
) -> SmsChannel:
    """Construct (not start) the configured SMS providers; each gets `start(receipts)` from the registry."""
    keywords = SmsKeywords(
        identity, profile, keywords=keywords_from(settings.keyword_languages, settings.keywords)
    )
    channel = SmsChannel(keywords=keywords)
    http: HttpSmsProvider | None = None
    for name in settings.order:
        if name == "smpp" and settings.smpp is not None:
            channel.providers.append(smpp_provider(settings.smpp, keywords.handle_inbound))
        elif name == "http" and settings.http is not None:
            http = http_sms_provider(settings.http)
            channel.providers.append(http)
    if http is not None:
        channel.callbacks = sms_callbacks_app(http, keywords.handle_inbound)
    return channel
