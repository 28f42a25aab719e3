"""The tracking endpoint over raw HTTP: clock skew, sources, analytics.js' way of posting, batches with bad messages."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from omni.common.v1 import common_pb2

from ..support import unique
from .conftest import Endpoint, basic, key


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _track(user: str | None = None, **fields: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "track", "messageId": unique("mid-"), "event": "Product Viewed"}
    if user is not None:
        message["userId"] = user
    return {**message, **fields}


async def test_a_device_clock_running_ahead_is_corrected(endpoint: Endpoint) -> None:
    user = unique("user-")
    now = datetime.now(UTC)
    skew = timedelta(hours=3, minutes=7)
    # The device thinks it is 3h07 later than it is; it recorded the event 5 minutes before sending it.
    message = _track(user, timestamp=_iso(now + skew - timedelta(minutes=5)), sentAt=_iso(now + skew))
    status, body = await endpoint.post("/v1/track", message)
    assert (status, body) == (200, {"success": True})
    (event,) = (await endpoint.profile_of("user_id", user)).recent_events
    occurred_at = event.occurred_at.ToDatetime(tzinfo=UTC)
    assert abs(occurred_at - (now - timedelta(minutes=5))) < timedelta(seconds=2)
    assert event.receive_time.ToDatetime(tzinfo=UTC) >= occurred_at


async def test_the_batch_sent_at_corrects_every_message_and_the_timestamp_alone_is_kept(
    endpoint: Endpoint,
) -> None:
    user = unique("user-")
    now = datetime.now(UTC)
    late_clock = now - timedelta(hours=1)
    corrected = _track(user, timestamp=_iso(late_clock - timedelta(minutes=2)))
    backfilled = _track(user, timestamp=_iso(now - timedelta(days=30)), sentAt=None)
    status, body = await endpoint.post("/v1/batch", {"batch": [corrected], "sentAt": _iso(late_clock)})
    assert status == 200 and body["accepted"] == 1
    # A message without sentAt (an import of old events) keeps its own timestamp.
    status, body = await endpoint.post("/v1/import", {"batch": [backfilled]})
    assert status == 200 and body["accepted"] == 1
    events = {key(e): e for e in (await endpoint.profile_of("user_id", user)).recent_events}
    times = {
        name: events[f"web:{m['messageId']}"].occurred_at.ToDatetime(tzinfo=UTC)
        for name, m in [
            ("corrected", corrected),
            ("backfilled", backfilled),
        ]
    }
    assert abs(times["corrected"] - (now - timedelta(minutes=2))) < timedelta(seconds=2)
    assert abs(times["backfilled"] - (now - timedelta(days=30))) < timedelta(milliseconds=1)


async def test_analytics_js_posts_text_plain_with_the_write_key_in_the_body(endpoint: Endpoint) -> None:
    cookie = unique("ajs-")
    message = {
        "type": "page",
        "messageId": unique("ajs-next-"),
        "anonymousId": cookie,
        "properties": {"path": "/", "url": "https://shop.example/"},
        "context": {"library": {"name": "analytics.js", "version": "npm:next-1.70.0"}},
        "writeKey": "wk_app",
        "sentAt": _iso(datetime.now(UTC)),
        "timestamp": _iso(datetime.now(UTC)),
    }
    headers = {"Content-Type": "text/plain", "Origin": "https://shop.example"}
    async with endpoint.session.options(f"{endpoint.url}/v1/p", headers=headers) as preflight:
        assert preflight.status == 204
        assert preflight.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    async with endpoint.session.post(
        f"{endpoint.url}/v1/p", data=json.dumps(message), headers=headers
    ) as response:
        assert response.status == 200
        assert response.headers["Access-Control-Allow-Origin"] == "https://shop.example"
        assert await response.json() == {"success": True}
    (event,) = (await endpoint.profile_of("anonymous_id", cookie)).recent_events
    # The app's key, but analytics.js runs in a browser.
    assert (event.type, event.channel, key(event)) == (
        "page_viewed",
        common_pb2.CHANNEL_WEB,
        f"app:{message['messageId']}",
    )


async def test_message_ids_are_scoped_by_source_and_repeated_ones_are_duplicates(endpoint: Endpoint) -> None:
    user, mid = unique("user-"), unique("mid-")
    message = _track(user, messageId=mid)
    status, body = await endpoint.post("/v1/batch", {"batch": [message, message]}, write_key="wk_web")
    assert (status, body["accepted"], body["duplicates"]) == (200, 1, 1)
    status, body = await endpoint.post("/v1/batch", {"batch": [message]}, write_key="wk_web")
    assert (status, body["accepted"], body["duplicates"]) == (200, 0, 1)
    # The app sending the same messageId is another event.
    status, body = await endpoint.post("/v1/batch", {"batch": [message]}, write_key="wk_app")
    assert (status, body["accepted"], body["duplicates"]) == (200, 1, 0)
    profile = await endpoint.profile_of("user_id", user)
    assert sorted(key(e) for e in profile.recent_events) == [f"app:{mid}", f"web:{mid}"]


async def test_one_bad_message_in_a_batch_is_reported_and_the_others_kept(endpoint: Endpoint) -> None:
    user, now = unique("user-"), datetime.now(UTC)
    good = [_track(user), _track(user, event="Order Completed")]
    future = _track(user, timestamp=_iso(now + timedelta(days=3)))
    ancient = _track(user, timestamp=_iso(now - timedelta(days=6 * 365)))
    no_ids = _track(None)
    refused_by_identity = _track("undefined")
    identified = unique("user-")
    invalid_email = {
        "type": "identify",
        "messageId": unique("mid-"),
        "userId": identified,
        "traits": {"email": "not-an-email", "plan": "gold"},
    }
    wrong_type = {**invalid_email, "messageId": unique("mid-"), "traits": {"loyalty_points": "many"}}
    batch = [good[0], future, no_ids, refused_by_identity, ancient, invalid_email, wrong_type, good[1]]
    before = await endpoint.services.counts()
    status, body = await endpoint.post("/v1/batch", {"batch": batch})
    assert status == 200
    assert (body["success"], body["accepted"], body["duplicates"], body["rejected"]) == (True, 4, 0, 4)
    errors = {e["index"]: e for e in body["errors"]}
    assert sorted(errors) == [1, 2, 3, 4]
    assert {e["messageId"] for e in body["errors"]} == {m["messageId"] for m in batch[1:5]}
    assert [f["field"] for f in errors[1]["fields"]] == ["timestamp"]
    assert "future" in errors[1]["message"]
    assert [f["field"] for f in errors[2]["fields"]] == ["userId"]
    assert [f["field"] for f in errors[3]["fields"]] == ["userId"]
    assert [f["field"] for f in errors[4]["fields"]] == ["timestamp"]
    # A bad trait is left out of its identify call, which is recorded with the others; the answer says so.
    warnings = {w["index"]: [f["field"] for f in w["fields"]] for w in body["warnings"]}
    assert warnings == {5: ["traits.email"], 6: ["traits.loyalty_points"]}
    # The good ones are stored whole; of the bad ones nothing at all.
    stored = await endpoint.event_keys(*(f"web:{m['messageId']}" for m in batch))
    assert stored == {f"web:{m['messageId']}" for m in [*good, invalid_email, wrong_type]}
    after = await endpoint.services.counts()
    assert after["events"] - before["events"] == 4
    assert after["traits"] - before["traits"] == 1  # plan: gold
    assert dict((await endpoint.profile_of("user_id", identified)).traits) == {"plan": "gold"}
    assert sorted(e.type for e in (await endpoint.profile_of("user_id", user)).recent_events) == [
        "order_completed",
        "product_viewed",
    ]


async def test_identify_in_a_batch_sets_traits_once(endpoint: Endpoint) -> None:
    user = unique("user-")
    identify = {"type": "identify", "messageId": unique("mid-"), "userId": user, "traits": {"plan": "gold"}}
    assert (await endpoint.post("/v1/batch", {"batch": [identify]}))[0] == 200
    profile = await endpoint.profile_of("user_id", user)
    assert dict(profile.traits) == {"plan": "gold"}
    # A later identify changes the plan; replaying the first one (a client retry) must not set it back.
    later = {**identify, "messageId": unique("mid-"), "traits": {"plan": "platinum"}}
    assert (await endpoint.post("/v1/identify", later))[0] == 200
    status, body = await endpoint.post("/v1/batch", {"batch": [identify]})
    assert (status, body["duplicates"]) == (200, 1)
    profile = await endpoint.profile_of("user_id", user)
    assert dict(profile.traits) == {"plan": "platinum"}
    assert profile.event_count == 2


async def test_the_batch_context_applies_to_every_message(endpoint: Endpoint) -> None:
    user, device = unique("user-"), unique("device-")
    messages = [_track(user), _track(user, context={"channel": "call_center"})]
    shared = {"device": {"id": device}, "library": {"name": "analytics-android"}}
    status, body = await endpoint.post("/v1/batch", {"batch": messages, "context": shared})
    assert (status, body["accepted"]) == (200, 2)
    profile = await endpoint.profile_of("device_id", device)
    assert sorted(e.channel for e in profile.recent_events) == [
        common_pb2.CHANNEL_APP,
        common_pb2.CHANNEL_CALL_CENTER,
    ]


async def test_a_browser_retry_passes_the_preflight_and_a_credentialed_send_is_allowed(
    endpoint: Endpoint,
) -> None:
    origin = "https://shop.example"
    # analytics.js retries with X-Retry-Count; the preflight must allow whatever headers it asks for.
    asked = {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, x-retry-count",
    }
    async with endpoint.session.options(f"{endpoint.url}/v1/t", headers=asked) as preflight:
        assert preflight.status == 204
        allowed = {h.strip().lower() for h in preflight.headers["Access-Control-Allow-Headers"].split(",")}
        assert {"content-type", "x-retry-count"} <= allowed
        assert preflight.headers["Access-Control-Allow-Origin"] == origin
        assert preflight.headers["Access-Control-Allow-Credentials"] == "true"
        assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    # A preflight that asks for nothing in particular still allows the retry header.
    async with endpoint.session.options(f"{endpoint.url}/v1/t", headers={"Origin": origin}) as preflight:
        assert "x-retry-count" in preflight.headers["Access-Control-Allow-Headers"].lower()
    # sendBeacon with a JSON Blob: credentialed, so the answer must name the origin (never "*").
    user = unique("user-")
    headers = {"Origin": origin, "Content-Type": "application/json", "X-Retry-Count": "1"}
    message = {**_track(user), "writeKey": "wk_web"}
    async with endpoint.session.post(f"{endpoint.url}/v1/t", json=message, headers=headers) as response:
        assert response.status == 200
        assert response.headers["Access-Control-Allow-Origin"] == origin
        assert response.headers["Access-Control-Allow-Credentials"] == "true"
        assert "Origin" in response.headers["Vary"]
    assert len((await endpoint.profile_of("user_id", user)).recent_events) == 1
    # Errors carry the headers too, or the page could not read why it was refused.
    async with endpoint.session.post(f"{endpoint.url}/v1/t", json=_track(None), headers=headers) as refused:
        assert refused.status == 401
        assert refused.headers["Access-Control-Allow-Origin"] == origin
    # A server library sends no Origin and gets no CORS headers.
    async with endpoint.session.post(
        f"{endpoint.url}/v1/t", json=message, headers={"Authorization": basic("wk_web")}
    ) as server:
        assert server.status == 200
        assert "Access-Control-Allow-Origin" not in server.headers
