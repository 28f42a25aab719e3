"""The SMS channel's HTTP side: the callback endpoints of the HTTP SMS providers in the registry.

The SMS providers are entries of the provider registry like any other (OMNI_GATEWAY_PROVIDERS: kind "smpp"
for an SMSC, "http-sms" for the HTTP vendor; their order in OMNI_GATEWAY_PROVIDER_ORDER is the failover
order), each with its keyword options (sms_keywords.KEYWORD_OPTIONS). What the HTTP vendor calls back (status
callbacks, inbound messages) is served by `sms_callbacks(registry)`, an aiohttp application for the gateway's
HTTP server to mount (`root.add_subapp("/sms", app)`): each HTTP SMS provider's endpoints under its name,
`/sms/<name>/twilio/status` and `/sms/<name>/twilio/inbound` (the URLs its `status_callback_url` and
`inbound_url` settings give the vendor).
"""

from __future__ import annotations

from aiohttp import web

from omni_gateway.domain import Channel
from omni_gateway.providers.http_sms import HttpSmsProvider
from omni_gateway.providers.registry import Registry
from omni_gateway.sms_inbound import sms_callbacks_app

__all__ = ["sms_callbacks"]


def sms_callbacks(registry: Registry) -> web.Application | None:
    """The callback endpoints of the registry's HTTP SMS providers, each under `/<provider name>`; None when
    there is none (nothing to mount)."""
    vendors = [
        slot.provider for slot in registry.chain(Channel.SMS) if isinstance(slot.provider, HttpSmsProvider)
    ]
    if not vendors:
        return None
    app = web.Application()
    for vendor in vendors:
        app.add_subapp(f"/{vendor.name}", sms_callbacks_app(vendor, vendor.inbound))
    return app
