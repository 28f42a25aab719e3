"""Normalisation of identifiers and the identifier-type registry (pure, no servers)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from omni_identity.erasure import DEVELOPMENT_KEY
from omni_identity.identifier_types import (
    IdentifierTypeConfig,
    IdentifierTypeRegistry,
    NormalisationKind,
    Trust,
    default_identifier_types,
)
from omni_identity.main import Settings
from omni_identity.normalise import IdentifierError, IdentifierKey, Normaliser


@pytest.fixture(scope="module")
def normaliser() -> Normaliser:
    return Normaliser(IdentifierTypeRegistry.defaults(), default_phone_region="US")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ada@example.com", "ada@example.com"),
        ("  Ada.Lovelace@Example.COM\t", "ada.lovelace@example.com"),
        ("ADA+shop@mail.example.co.uk", "ada+shop@mail.example.co.uk"),
    ],
)
def test_emails_are_trimmed_and_lower_cased(normaliser: Normaliser, raw: str, expected: str) -> None:
    assert normaliser.normalise("email", raw) == IdentifierKey("email", expected)


@pytest.mark.parametrize(
    "raw",
    ["ada", "ada@", "@example.com", "ada@example", "ada@@example.com", "a da@example.com", "ada@example."],
)
def test_what_is_not_an_email_address_is_refused(normaliser: Normaliser, raw: str) -> None:
    with pytest.raises(IdentifierError) as caught:
        normaliser.normalise("email", raw)
    assert caught.value.part == "value"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("(415) 555-0132", "+14155550132"),
        ("415.555.0132", "+14155550132"),
        ("1-415-555-0132", "+14155550132"),
        ("+1 415 555 0132", "+14155550132"),
        ("+44 20 7946 0958", "+442079460958"),
        ("+49 30 901820", "+4930901820"),
    ],
)
def test_phones_become_e164(normaliser: Normaliser, raw: str, expected: str) -> None:
    assert normaliser.normalise("phone", raw) == IdentifierKey("phone", expected)


def test_numbers_without_a_plus_are_read_in_the_default_region() -> None:
    british = Normaliser(IdentifierTypeRegistry.defaults(), default_phone_region="gb")
    assert british.normalise("phone", "020 7946 0958").value == "+442079460958"


@pytest.mark.parametrize("raw", ["12345", "+1 000 000 0000", "phone", "+999 1234567", "1" * 70])
def test_invalid_phone_numbers_are_refused(normaliser: Normaliser, raw: str) -> None:
    with pytest.raises(IdentifierError) as caught:
        normaliser.normalise("phone", raw)
    assert caught.value.part == "value"


def test_other_types_are_trimmed_and_keep_their_case(normaliser: Normaliser) -> None:
    assert normaliser.normalise("device_id", "  AbC-123 ") == IdentifierKey("device_id", "AbC-123")
    assert normaliser.normalise(" user_id ", "42") == IdentifierKey("user_id", "42")


@pytest.mark.parametrize(
    ("type_name", "raw"),
    [
        ("anonymous_id", ""),
        ("anonymous_id", "null"),
        ("anonymous_id", "Undefined"),
        ("device_id", "anonymous"),
        ("user_id", "0"),
        ("user_id", "-1"),
        ("loyalty_card", "None"),
        ("pos_customer_id", "unknown"),
        ("push_token", "0000"),
        ("device_id", "00000000-0000-0000-0000-000000000000"),
        ("email", "test@test.com"),
        ("email", "No-Reply@shop.example"),
        ("email", "test123@gmail.com"),
        ("email", "Test@Shop.example"),
        ("email", "ada@shop.test"),
        ("email", "ada@mail.invalid"),
        ("email", "ada@localhost.localhost"),
    ],
)
def test_blocked_values_are_refused(normaliser: Normaliser, type_name: str, raw: str) -> None:
    with pytest.raises(IdentifierError) as caught:
        normaliser.normalise(type_name, raw)
    assert caught.value.part == "value"


def test_values_longer_than_the_limit_are_refused(normaliser: Normaliser) -> None:
    assert normaliser.normalise("user_id", "u" * 256).value == "u" * 256
    with pytest.raises(IdentifierError, match="longer than 256"):
        normaliser.normalise("user_id", "u" * 257)


@pytest.mark.parametrize("type_name", ["", "  ", "passport", "EMAIL"])
def test_unknown_types_are_refused(normaliser: Normaliser, type_name: str) -> None:
    with pytest.raises(IdentifierError) as caught:
        normaliser.normalise(type_name, "x1")
    assert caught.value.part == "type"


def test_the_defaults_cover_every_channel_identifier() -> None:
    assert IdentifierTypeRegistry.defaults().names == (
        "anonymous_id",
        "device_id",
        "email",
        "loyalty_card",
        "phone",
        "pos_customer_id",
        "push_token",
        "user_id",
        "web_push_subscription",
    )


def test_types_are_configured_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    types = [
        {"name": "email", "kind": "email"},
        {"name": "member_no", "blocked_values": ["demo"], "blocked_patterns": ["x+"], "max_length": 8},
        {"name": "cookie", "trust": "low", "priority": 90, "limit": 3, "limit_window": "P7D"},
    ]
    monkeypatch.setenv("OMNI_IDENTITY_IDENTIFIER_TYPES", json.dumps(types))
    monkeypatch.setenv("OMNI_IDENTITY_DEFAULT_PHONE_REGION", "de")
    monkeypatch.setenv("OMNI_IDENTITY_GRPC_HOST", "127.0.0.1")
    settings = Settings(database_url="postgresql+asyncpg://db/identity", nats_url="nats://127.0.0.1:4222")
    assert settings.default_phone_region == "DE"
    cookie = IdentifierTypeRegistry(settings.identifier_types).get("cookie")
    assert cookie is not None
    assert (cookie.trust, cookie.priority, cookie.limit, cookie.limit_window) == (
        Trust.LOW,
        90,
        3,
        timedelta(days=7),
    )
    normaliser = Normaliser(IdentifierTypeRegistry(settings.identifier_types))

    assert normaliser.normalise("member_no", "M-17").value == "M-17"
    for blocked in ("DEMO", "xxx"):
        with pytest.raises(IdentifierError):
            normaliser.normalise("member_no", blocked)
    with pytest.raises(IdentifierError, match="longer than 8"):
        normaliser.normalise("member_no", "M-1234567")
    with pytest.raises(IdentifierError) as caught:
        normaliser.normalise("phone", "+14155550132")
    assert caught.value.part == "type"


def test_an_unknown_phone_region_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="region"):
        Settings(
            database_url="postgresql+asyncpg://db/identity",
            nats_url="nats://127.0.0.1:4222",
            grpc_host="127.0.0.1",
            default_phone_region="XX",
        )


@pytest.mark.parametrize(
    ("type_config", "message"),
    [
        ({"name": "x", "limit_window": "P1D"}, "needs a limit"),
        ({"name": "x", "limit": 1, "limit_window": "-P1D"}, "positive"),
        ({"name": "x", "limit": 0}, "greater than or equal to 1"),
        ({"name": "x", "trust": "absolute"}, "trust"),
        ({"name": "x", "priority": 0}, "priority"),
    ],
    ids=["window-without-limit", "negative-window", "zero-limit", "unknown-trust", "zero-priority"],
)
def test_bad_rule_knobs_are_refused_at_start(type_config: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        IdentifierTypeConfig.model_validate(type_config)


def test_the_tombstone_key_is_required_beyond_loopback() -> None:
    common = {"database_url": "postgresql+asyncpg://db/identity", "nats_url": "nats://127.0.0.1:4222"}
    with pytest.raises(ValueError, match="TOMBSTONE_KEY is required"):
        Settings(**common, grpc_host="0.0.0.0")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 32"):
        Settings(**common, grpc_host="0.0.0.0", tombstone_key="short")  # type: ignore[arg-type]
    secret = "k" * 32
    served = Settings(**common, grpc_host="0.0.0.0", tombstone_key=secret)  # type: ignore[arg-type]
    assert secret not in repr(served)
    assert served.tombstones().key == secret.encode()
    for host in ("127.0.0.1", "::1", "localhost"):
        assert Settings(**common, grpc_host=host).tombstones().key == DEVELOPMENT_KEY  # type: ignore[arg-type]


def test_a_type_configured_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        IdentifierTypeRegistry([*default_identifier_types(), IdentifierTypeConfig(name="email")])


def test_kinds_of_the_defaults() -> None:
    kinds = {config.name: config.kind for config in default_identifier_types()}
    assert kinds["email"] is NormalisationKind.EMAIL
    assert kinds["phone"] is NormalisationKind.PHONE
    assert kinds["loyalty_card"] is NormalisationKind.OPAQUE
