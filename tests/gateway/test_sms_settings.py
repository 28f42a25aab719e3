"""The SMS providers built from the provider registry's configuration (JSON), as the gateway builds them."""

from __future__ import annotations

import pydantic
import pytest

from omni_gateway.domain import Channel
from omni_gateway.providers.http_sms import HttpSmsProvider
from omni_gateway.providers.registry import ProviderSpec, build_registry
from omni_gateway.providers.smpp import SmppProvider
from omni_gateway.sms import sms_callbacks

SMPP = {"host": "smsc.example", "system_id": "omni", "password": "secret", "source_addr": "OmniShop"}
HTTP = {
    "account_sid": "AC1",
    "auth_token": "token",
    "from_number": "+15005550006",
    "status_callback_url": "https://gw.example/sms/vendor/twilio/status",
    "keyword_languages": ["de", "en"],
}


def _specs(**http: object) -> list[ProviderSpec]:
    return [
        ProviderSpec.model_validate({"name": "smsc", "kind": "smpp", "channel": "sms", **SMPP}),
        ProviderSpec.model_validate({"name": "vendor", "kind": "http-sms", "channel": "sms", **HTTP, **http}),
    ]


def test_providers_in_failover_order_with_callbacks_and_keywords() -> None:
    stubs = {"identity": object(), "profile": object()}  # not called here
    registry = build_registry(_specs(), order={"sms": ["vendor", "smsc"]}, defaults=stubs)
    providers = [slot.provider for slot in registry.chain(Channel.SMS)]
    assert [type(p) for p in providers] == [HttpSmsProvider, SmppProvider]
    assert [p.name for p in providers] == ["vendor", "smsc"]
    vendor = providers[0]
    assert isinstance(vendor, HttpSmsProvider) and vendor.inbound is not None
    keywords = vendor.inbound.__self__  # type: ignore[attr-defined]
    assert keywords.classify("STOPP") is not None
    assert keywords.classify("ARRET") is None  # French is not configured for the vendor
    callbacks = sms_callbacks(registry)
    assert callbacks is not None
    paths = {r.canonical for app in callbacks._subapps for r in app.router.resources()}
    assert paths == {"/vendor/twilio/status", "/vendor/twilio/inbound"}


def test_no_http_vendor_no_callbacks_and_bad_settings_refused() -> None:
    registry = build_registry(_specs()[:1])
    assert sms_callbacks(registry) is None
    too_long = {"name": "s", "kind": "smpp", "channel": "sms", **SMPP, "system_id": "x" * 16}
    with pytest.raises(pydantic.ValidationError) as refused:
        build_registry([ProviderSpec.model_validate(too_long)])
    assert "secret" not in str(refused.value)
    with pytest.raises(ValueError, match="tlh"):
        build_registry(_specs(keyword_languages=["tlh"]))
    with pytest.raises(pydantic.ValidationError):
        build_registry(_specs(auth_tokn="typo"))
