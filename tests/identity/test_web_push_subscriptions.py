"""A browser's Web Push subscription is an identifier of its person: checked, stored whole and canonical,
found again however the browser laid out its JSON, and kept out of probabilistic matching."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pydantic
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from omni.identity.v1 import identity_pb2, matching_pb2, matching_pb2_grpc
from omni_identity.identifier_types import (
    MAX_SUBSCRIPTION_LENGTH,
    IdentifierTypeConfig,
    IdentifierTypeRegistry,
    NormalisationKind,
)
from omni_identity.normalise import IdentifierError, Normaliser
from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres
from omni_kit.errors import status_details

from .conftest import running_identity
from .support import Identity, ident, resolve, unique

TYPE = "web_push_subscription"


def _b64(raw: bytes, *, padded: bool = False) -> str:
    text = base64.urlsafe_b64encode(raw).decode()
    return text if padded else text.rstrip("=")


def _p256dh() -> bytes:
    return (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )


def subscription(
    endpoint: str | None = None, *, p256dh: bytes | None = None, auth: bytes | None = None, **extra: Any
) -> dict[str, Any]:
    """A subscription as `PushSubscription.toJSON()` gives it."""
    return {
        "endpoint": endpoint or f"https://fcm.googleapis.com/fcm/send/{unique()}:APA91b{unique()}",
        "expirationTime": None,
        "keys": {"p256dh": _b64(p256dh or _p256dh()), "auth": _b64(auth or os.urandom(16))},
        **extra,
    }


@pytest.fixture
def normaliser() -> Normaliser:
    return Normaliser(IdentifierTypeRegistry.defaults())


def test_the_same_subscription_is_one_canonical_value(normaliser: Normaliser) -> None:
    p256dh, auth = _p256dh(), os.urandom(16)
    endpoint = "https://updates.push.services.mozilla.com/wpush/v2/gAAAAABk"
    compact = json.dumps(subscription(endpoint, p256dh=p256dh, auth=auth), separators=(",", ":"))
    # Another layout, padded base64url, keys in another order, a field identity does not keep.
    laid_out = json.dumps(
        {
            "keys": {"auth": _b64(auth, padded=True), "p256dh": _b64(p256dh, padded=True)},
            "endpoint": f"  {endpoint} ",
            "expirationTime": 1767225600000,
        },
        indent=2,
    )
    first = normaliser.normalise(TYPE, compact)
    assert normaliser.normalise(TYPE, laid_out) == first
    assert json.loads(first.value) == {
        "endpoint": endpoint,
        "keys": {"auth": _b64(auth), "p256dh": _b64(p256dh)},
    }
    assert first.value == json.dumps(json.loads(first.value), sort_keys=True, separators=(",", ":"))


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("https://push.example.com/abc", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        (json.dumps({"keys": {}}), "no endpoint"),
        (json.dumps(subscription("http://push.example.com/abc")), "not an https URL"),
        (json.dumps(subscription("http://127.0.0.1:8080/abc")), "not an https URL"),
        (json.dumps(subscription("ftp://push.example.com/abc")), "not an https URL"),
        (json.dumps(subscription("https:///abc")), "no host"),
        (json.dumps(subscription("https://user:pw@push.example.com/abc")), "no user, password"),
        (json.dumps(subscription("https://push.example.com/a b")), "spaces"),
        (json.dumps({"endpoint": "https://push.example.com/a"}), "no keys"),
        (json.dumps(subscription(p256dh=_p256dh()[:64])), "keys.p256dh is 64 bytes, not 65"),
        (json.dumps(subscription(p256dh=b"\x02" + _p256dh()[1:])), "not an uncompressed P-256"),
        (json.dumps(subscription(auth=os.urandom(15))), "keys.auth is 15 bytes, not 16"),
        (json.dumps({**subscription(), "keys": {"p256dh": "+/+/", "auth": "x"}}), "not base64url"),
        (json.dumps({**subscription(), "keys": {"p256dh": 7, "auth": "x"}}), "not base64url"),
        (json.dumps(subscription("https://push.example.com/" + "a" * 900)), "longer than 1024"),
        (json.dumps(subscription(padding="x" * 5000)), "longer than 4096"),
        ("   ", "is required"),
    ],
)
def test_what_is_no_subscription_is_refused(normaliser: Normaliser, value: str, why: str) -> None:
    with pytest.raises(IdentifierError, match=why) as caught:
        normaliser.normalise(TYPE, value)
    assert caught.value.part == "value"


def test_http_to_loopback_only_when_configured() -> None:
    local = json.dumps(subscription("http://127.0.0.1:8080/push/abc"))
    testing = Normaliser(IdentifierTypeRegistry.defaults(), web_push_http_loopback=True)
    assert json.loads(testing.normalise(TYPE, local).value)["endpoint"] == "http://127.0.0.1:8080/push/abc"
    with pytest.raises(IdentifierError, match="not an https URL"):
        testing.normalise(TYPE, json.dumps(subscription("http://push.example.com/abc")))


def test_the_defaults_hold_push_tokens_and_subscriptions() -> None:
    registry = IdentifierTypeRegistry.defaults()
    token, web = registry.get("push_token"), registry.get(TYPE)
    assert token is not None and token.kind is NormalisationKind.OPAQUE and token.record_matching
    assert web is not None and web.kind is NormalisationKind.WEB_PUSH_SUBSCRIPTION
    assert web.max_length == MAX_SUBSCRIPTION_LENGTH and not web.record_matching
    assert web.trust.value == "low" and web.limit == 10


def test_only_subscriptions_may_be_longer_than_256() -> None:
    assert (
        IdentifierTypeConfig(name="web", kind="web_push_subscription").max_length == MAX_SUBSCRIPTION_LENGTH
    )
    assert IdentifierTypeConfig(name="web", kind="web_push_subscription", max_length=600).max_length == 600
    with pytest.raises(pydantic.ValidationError, match="at most 256"):
        IdentifierTypeConfig(name="member_no", max_length=257)


# The identity server (IdentityService and MatchingService), accepting http subscriptions on loopback.


@pytest.fixture(scope="module")
async def identity(postgres: EmbeddedPostgres, nats_server: EmbeddedNats) -> AsyncIterator[Identity]:
    async with running_identity(postgres, nats_server, web_push_http_loopback=True) as running:
        yield running


async def _identifier_count(identity: Identity) -> int:
    async with identity.runtime.engine.connect() as connection:
        return int(await connection.scalar(sa.text("SELECT count(*) FROM identifiers")) or 0)


async def test_resolve_stores_the_subscription_whole_and_finds_it_again(identity: Identity) -> None:
    card = unique("card-")
    raw = subscription(f"http://127.0.0.1:9/push/{unique()}")
    first = await resolve(identity, ident("loyalty_card", card), ident(TYPE, json.dumps(raw)))
    person = await identity.stub.GetPerson(identity_pb2.GetPersonRequest(person_id=first.person_id))
    stored = [i.value for i in person.person.identifiers if i.type == TYPE]
    assert len(stored) == 1
    assert json.loads(stored[0]) == {"endpoint": raw["endpoint"], "keys": raw["keys"]}
    # The page registering the same subscription again, laid out otherwise: the same person, nothing added.
    before = await _identifier_count(identity)
    again = await resolve(identity, ident(TYPE, json.dumps(raw, indent=1, sort_keys=True)))
    assert again.person_id == first.person_id and not again.created
    assert await _identifier_count(identity) == before


async def test_resolve_refuses_a_bad_subscription_and_writes_nothing(identity: Identity) -> None:
    before = await _identifier_count(identity)
    bad = json.dumps(subscription(auth=os.urandom(8)))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await resolve(identity, ident("loyalty_card", unique("card-")), ident(TYPE, bad))
    details = status_details(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == {"identifiers[1].value"}
    assert "keys.auth is 8 bytes" in details.field_violations[0].description
    # The value is personal data: the refusal names what is wrong, never the subscription.
    assert bad not in details.message and bad not in details.field_violations[0].description
    assert await _identifier_count(identity) == before


async def test_records_for_probabilistic_matching_may_not_carry_one(identity: Identity) -> None:
    stub = matching_pb2_grpc.MatchingServiceStub(
        grpc.aio.insecure_channel(f"127.0.0.1:{identity.runtime.port}")
    )
    record = matching_pb2.PersonRecord(
        given_name="Ada",
        surname="Lovelace",
        postcode="2000",
        identifiers=[ident("email", f"{unique()}@shop.example"), ident(TYPE, json.dumps(subscription()))],
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.MatchRecord(matching_pb2.MatchRecordRequest(record=record))
    details = status_details(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == {"record.identifiers[1].type"}
    # A push token is still a clue there, like any other identifier.
    record.identifiers[1].CopyFrom(ident("push_token", unique("tok-")))
    answer = await stub.MatchRecord(matching_pb2.MatchRecordRequest(record=record))
    assert answer.result.person_id
