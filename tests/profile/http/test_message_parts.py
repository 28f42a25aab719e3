"""What the endpoint keeps of a message when part of it cannot be: sizes in UTF-8, a trimmed context, dropped
traits (each named in the answer's warnings), and RudderStack's habits (traits in context.traits,
originalTimestamp)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from ..support import unique
from .conftest import Endpoint


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _track(user: str, **fields: Any) -> dict[str, Any]:
    return {"type": "track", "messageId": unique("mid-"), "userId": user, "event": "Review Written", **fields}


def _identify(user: str, **fields: Any) -> dict[str, Any]:
    return {"type": "identify", "messageId": unique("mid-"), "userId": user, **fields}


def _warned(body: dict[str, Any]) -> dict[int, dict[str, str]]:
    return {w["index"]: {f["field"]: f["description"] for f in w["fields"]} for w in body.get("warnings", [])}


async def test_sizes_count_utf8_bytes_not_escapes(endpoint: Endpoint) -> None:
    user = unique("user-")
    # 14 KB of "é": 28 KB in UTF-8, 84 KB of \\u00e9 escapes.
    review = "é" * 14_000
    status, body = await endpoint.post("/v1/track", _track(user, properties={"review": review}))
    assert (status, body) == (200, {"success": True})
    (event,) = (await endpoint.profile_of("user_id", user)).recent_events
    assert event.properties["review"] == review
    # A context of 7 KB of "ü" is kept whole.
    user = unique("user-")
    context = {"page": {"title": "ü" * 3_500}}
    assert (await endpoint.post("/v1/track", _track(user, context=context)))[1] == {"success": True}
    (event,) = (await endpoint.profile_of("user_id", user)).recent_events
    assert event.context["page"]["title"] == context["page"]["title"]
    # Past 32 KB in UTF-8 the message is still refused.
    status, body = await endpoint.post("/v1/track", _track(user, properties={"review": "é" * 16_500}))
    assert status == 400 and "32 KB" in body["message"]


async def test_an_oversize_context_is_trimmed_and_the_answer_says_what_was_left_out(
    endpoint: Endpoint,
) -> None:
    user = unique("user-")
    context = {
        "page": {"url": "https://shop.example/boots", "referrer": "https://search.example/"},
        "campaign": {"source": "newsletter", "name": "spring"},
        "userAgent": "Mozilla/5.0",
        "consentLog": ["granted"] * 1_500,
        "debug": "x" * 2_000,
    }
    message = _track(user, context=context)
    status, body = await endpoint.post("/v1/track", message)
    assert status == 200
    assert list(_warned(body)) == [0] and list(_warned(body)[0]) == ["context.consentLog"]
    assert body["warnings"][0]["messageId"] == message["messageId"]
    (event,) = (await endpoint.profile_of("user_id", user)).recent_events
    assert sorted(event.context) == ["campaign", "debug", "page", "userAgent"]
    # In a batch, the message is recorded with the others and its warning carries its index.
    user = unique("user-")
    batch = [_track(user), _track(user, context={"a": "x" * 5_000, "b": "y" * 5_000, "c": "z"})]
    status, body = await endpoint.post("/v1/batch", {"batch": batch})
    assert (status, body["accepted"], body["errors"]) == (200, 2, [])
    assert list(_warned(body)) == [1] and list(_warned(body)[1]) == ["context.a"]


async def test_a_bad_trait_is_left_out_and_the_good_ones_are_set(endpoint: Endpoint) -> None:
    user = unique("user-")
    message = _identify(user, traits={"email": "not an email", "first_name": "Bob", "vip": "yes"})
    status, body = await endpoint.post("/v1/identify", message)
    assert status == 200 and body["success"] is True
    assert _warned(body) == {
        0: {
            "traits.email": "must be an email address; left out, the rest was recorded",
            "traits.vip": "must be true or false; left out, the rest was recorded",
        }
    }
    profile = await endpoint.profile_of("user_id", user)
    assert dict(profile.traits) == {"first_name": "Bob"}
    assert [e.type for e in profile.recent_events] == ["identified"]


async def test_in_a_batch_each_identify_keeps_its_good_traits_and_names_its_bad_ones(
    endpoint: Endpoint,
) -> None:
    users = [unique("user-") for _ in range(3)]
    batch = [
        _identify(users[0], traits={"first_name": "Ada", "birthday": "someday"}),
        _identify(users[1], traits={"plan": "gold", "": "unnamed", "score": "<1e400>"}),
        _identify(users[2], traits={"last_name": "Lovelace"}),
    ]
    # 1e400 is valid JSON, but past what a double holds: Python reads it as infinity.
    raw = json.dumps({"batch": batch}).replace('"<1e400>"', "1e400").encode()
    status, body = await endpoint.post("/v1/batch", raw)
    assert (status, body["accepted"], body["rejected"]) == (200, 3, 0)
    warned = _warned(body)
    assert sorted(warned) == [0, 1]
    assert list(warned[0]) == ["traits.birthday"]
    assert sorted(warned[1]) == ["traits", "traits.score"]
    assert "finite" in warned[1]["traits.score"]
    expected = [{"first_name": "Ada"}, {"plan": "gold"}, {"last_name": "Lovelace"}]
    for user, traits in zip(users, expected, strict=True):
        assert dict((await endpoint.profile_of("user_id", user)).traits) == traits


async def test_a_phone_identity_cannot_read_is_left_out_and_the_rest_recorded(endpoint: Endpoint) -> None:
    user = unique("user-")
    message = _identify(user, traits={"phone": "12", "first_name": "Grace"})
    status, body = await endpoint.post("/v1/identify", message)
    assert status == 200
    assert list(_warned(body)[0]) == ["traits.phone"]
    profile = await endpoint.profile_of("user_id", user)
    assert dict(profile.traits) == {"first_name": "Grace"}
    # In a batch too, and a message with no other identifier stays refused.
    user = unique("user-")
    batch = [
        _identify(user, traits={"phone": "34", "city": "Oslo"}),
        {"type": "identify", "messageId": unique("mid-"), "anonymousId": None, "traits": {"phone": "5"}},
    ]
    status, body = await endpoint.post("/v1/batch", {"batch": batch})
    assert (status, body["accepted"], body["rejected"]) == (200, 1, 1)
    assert list(_warned(body)) == [0]
    assert dict((await endpoint.profile_of("user_id", user)).traits) == {"city": "Oslo"}


async def test_an_email_among_context_traits_that_is_not_one_is_left_out(endpoint: Endpoint) -> None:
    user = unique("user-")
    message = _track(user, context={"traits": {"email": ["ada@example.com"]}})
    status, body = await endpoint.post("/v1/track", message)
    assert status == 200
    assert list(_warned(body)[0]) == ["context.traits.email"]
    assert len((await endpoint.profile_of("user_id", user)).recent_events) == 1


async def test_rudderstack_identify_traits_in_context_traits_set_the_profile(endpoint: Endpoint) -> None:
    user = unique("user-")
    email = f"{user}@example.com"
    # What rudder-sdk-python's identify sends: the traits only under context.traits, "channel": "server".
    message = {
        "type": "identify",
        "messageId": unique("rudder-"),
        "userId": user,
        "channel": "server",
        "integrations": {"All": True},
        "timestamp": _iso(datetime.now(UTC)),
        "context": {
            "traits": {"email": email, "first_name": "Ada", "plan": "gold"},
            "library": {"name": "analytics-python", "version": "2.1.0"},
        },
    }
    status, body = await endpoint.post("/v1/batch", {"batch": [message]})
    assert (status, body["accepted"]) == (200, 1)
    profile = await endpoint.profile_of("email", email)
    assert dict(profile.traits) == {"email": email, "first_name": "Ada", "plan": "gold"}
    assert profile.person_id == await endpoint.person_of("user_id", user)
    # The identify's own traits win over context.traits.
    both = {**message, "messageId": unique("rudder-"), "traits": {"plan": "platinum"}}
    assert (await endpoint.post("/v1/identify", both))[0] == 200
    assert (await endpoint.profile_of("user_id", user)).traits["plan"] == "platinum"


async def test_original_timestamp_is_the_events_time_when_there_is_no_timestamp(endpoint: Endpoint) -> None:
    user = unique("user-")
    now = datetime.now(UTC)
    skew = timedelta(minutes=47)
    # An app offline for two hours, its clock 47 minutes fast, sends now.
    offline = _track(
        user,
        originalTimestamp=_iso(now + skew - timedelta(hours=2)),
        sentAt=_iso(now + skew),
    )
    # Without sentAt the originalTimestamp is taken as it is.
    imported = _track(user, originalTimestamp=_iso(now - timedelta(days=3)))
    status, body = await endpoint.post("/v1/batch", {"batch": [offline, imported]})
    assert (status, body["accepted"]) == (200, 2)
    events = {
        e.id: e.occurred_at.ToDatetime(tzinfo=UTC)
        for e in (await endpoint.profile_of("user_id", user)).recent_events
    }
    assert abs(events[offline["messageId"]] - (now - timedelta(hours=2))) < timedelta(seconds=2)
    assert abs(events[imported["messageId"]] - (now - timedelta(days=3))) < timedelta(milliseconds=1)
    # A bad one is reported under its own name.
    status, body = await endpoint.post("/v1/track", _track(user, originalTimestamp="last week"))
    assert status == 400 and body["errors"][0]["fields"][0]["field"] == "originalTimestamp"
    far = _track(user, originalTimestamp=_iso(now + timedelta(days=3)))
    status, body = await endpoint.post("/v1/track", far)
    assert status == 400 and body["errors"][0]["fields"][0]["field"] == "originalTimestamp"
