"""The SMS channel built from settings as they come from the environment (JSON)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from omni_gateway.providers.http_sms import HttpSmsProvider
from omni_gateway.providers.smpp import SmppProvider
from omni_gateway.sms import SmsSettings, build_sms

SETTINGS = """{
  "smpp": {"host": "smsc.example", "system_id": "omni", "password": "secret", "source_addr": "OmniShop"},
  "http": {"account_sid": "AC1", "auth_token": "token", "from_number": "+15005550006",
           "status_callback_url": "https://gw.example/sms/twilio/status"},
  "order": ["http", "smpp"],
  "keyword_languages": ["de", "en"]
}"""


def test_providers_in_failover_order_with_callbacks_and_keywords() -> None:
    settings = SmsSettings.model_validate_json(SETTINGS)
    sms = build_sms(settings, identity=None, profile=None)  # type: ignore[arg-type]  # not called here
    assert [type(p) for p in sms.providers] == [HttpSmsProvider, SmppProvider]
    assert [p.name for p in sms.providers] == ["http-sms", "smpp"]
    assert sms.callbacks is not None
    assert sms.keywords is not None
    assert sms.keywords.classify("STOPP") is not None
    assert sms.keywords.classify("ARRET") is None  # French is not configured


def test_only_configured_providers_and_known_names() -> None:
    sms = build_sms(SmsSettings(), identity=None, profile=None)  # type: ignore[arg-type]
    assert sms.providers == [] and sms.callbacks is None
    with pytest.raises(ValidationError):
        SmsSettings(order=["smpp", "carrier-pigeon"])
    with pytest.raises(ValidationError):
        SmsSettings(keyword_languages=["tlh"])
    with pytest.raises(ValidationError):
        SmsSettings.model_validate({"smpp": {"host": "h", "system_id": "x" * 16, "source_addr": "1"}})
