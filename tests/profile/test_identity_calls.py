"""How profile calls identity: one BatchResolvePersons per batch it records, within identity's limits, and
within the time its own caller has left.

Identity runs for real behind a small gRPC proxy that forwards every call unchanged and counts them by
method (and can answer slowly), so these tests see the calls profile really makes.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
import pytest

from omni.profile.v1 import profile_pb2, profile_pb2_grpc
from omni_identity import main as identity_main
from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres
from omni_kit.errors import MAX_FIELD_VIOLATIONS
from omni_profile import main as profile_main

from .support import COMMON, close_runtime, event, ident, unique


class CountingProxy(grpc.GenericRpcHandler):
    """Forwards unary calls to a target as bytes, after delay_s, and counts them by method name; records the
    time each call had left as it arrived (its deadline as profile set it)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.calls: Counter[str] = Counter()
        self.delay_s = 0.0
        self.time_left: list[float | None] = []

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        forward = self.channel.unary_unary(method)

        async def call(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            self.calls[method.rsplit("/", 1)[-1]] += 1
            self.time_left.append(context.time_remaining())
            await asyncio.sleep(self.delay_s)
            try:
                return bytes(await forward(request, timeout=context.time_remaining()))
            except grpc.aio.AioRpcError as error:
                await context.abort(
                    error.code(), error.details() or "", tuple(error.trailing_metadata() or ())
                )
                raise

        return grpc.unary_unary_rpc_method_handler(call)


@dataclass
class Wired:
    """Profile whose identity calls go through the counting proxy."""

    profile: profile_pb2_grpc.ProfileServiceStub
    proxy: CountingProxy
    http: str
    session: aiohttp.ClientSession


@pytest.fixture(scope="module")
async def wired(postgres: EmbeddedPostgres, nats_server: EmbeddedNats) -> AsyncIterator[Wired]:
    namespace = "t" + uuid.uuid4().hex[:10]
    identity_db, profile_db = f"identity_{uuid.uuid4().hex[:16]}", f"profile_{uuid.uuid4().hex[:16]}"
    postgres.create_database(identity_db)
    postgres.create_database(profile_db)
    shared: dict[str, Any] = {**COMMON, "nats_url": nats_server.url, "event_namespace": namespace}
    identity = await identity_main.start(
        identity_main.Settings.model_validate({**shared, "database_url": postgres.url(identity_db)})
    )
    to_identity = grpc.aio.insecure_channel(f"127.0.0.1:{identity.port}")
    proxy = CountingProxy(to_identity)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((proxy,))
    proxy_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    profile = await profile_main.start(
        profile_main.Settings.model_validate(
            {
                **shared,
                "database_url": postgres.url(profile_db),
                "identity_target": f"127.0.0.1:{proxy_port}",
                "http_host": "127.0.0.1",
                "http_port": 0,
                "write_keys": {"wk_web": "web"},
            }
        )
    )
    assert profile.http is not None
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{profile.port}")
    session = aiohttp.ClientSession()
    try:
        yield Wired(
            profile_pb2_grpc.ProfileServiceStub(channel),
            proxy,
            f"http://127.0.0.1:{profile.http.port}",
            session,
        )
    finally:
        await session.close()
        await channel.close()
        await close_runtime(profile)
        await server.stop(None)
        await to_identity.close()
        await close_runtime(identity)
        postgres.drop_database(profile_db)
        postgres.drop_database(identity_db)


def _new_customer_event() -> profile_pb2.Event:
    return event(identifiers=[ident("anonymous_id", unique("anon-")), ident("device_id", unique("dev-"))])


async def test_a_batch_of_new_customers_costs_one_identity_call(wired: Wired) -> None:
    wired.proxy.calls.clear()
    response = await wired.profile.BatchTrackEvents(
        profile_pb2.BatchTrackEventsRequest(events=[_new_customer_event() for _ in range(300)])
    )
    assert response.recorded_count == 300
    assert wired.proxy.calls == Counter({"BatchResolvePersons": 1})


async def test_a_stream_costs_one_identity_call_per_transaction(wired: Wired) -> None:
    wired.proxy.calls.clear()

    async def messages() -> AsyncIterator[profile_pb2.StreamTrackEventsRequest]:
        for _ in range(3):
            yield profile_pb2.StreamTrackEventsRequest(events=[_new_customer_event() for _ in range(200)])

    response = await wired.profile.StreamTrackEvents(messages())
    assert response.accepted == 600
    # Events are recorded up to 1,000 a transaction, as they arrive: never one call per event.
    assert 1 <= wired.proxy.calls["BatchResolvePersons"] <= 3
    assert set(wired.proxy.calls) == {"BatchResolvePersons"}


async def test_an_http_batch_costs_one_identity_call(wired: Wired) -> None:
    wired.proxy.calls.clear()
    batch = [
        {"type": "track", "event": "Product Viewed", "messageId": unique("m-"), "anonymousId": unique("a-")}
        for _ in range(100)
    ]
    authorization = "Basic " + base64.b64encode(b"wk_web:").decode()
    async with wired.session.post(
        f"{wired.http}/v1/batch", json={"batch": batch}, headers={"Authorization": authorization}
    ) as answer:
        assert answer.status == 200, await answer.text()
    assert wired.proxy.calls == Counter({"BatchResolvePersons": 1})


async def test_a_batch_with_more_identifiers_than_one_identity_call_takes_is_recorded_whole(
    wired: Wired,
) -> None:
    # Identity takes at most 10,000 identifiers in one BatchResolvePersons: 1,000 events of 11 identifiers
    # each are valid for profile and must not be refused as a whole.
    def crowded() -> profile_pb2.Event:
        kinds = ["anonymous_id"] * 3 + ["device_id"] * 3 + ["push_token"] * 3 + ["pos_customer_id"] * 2
        return event(identifiers=[ident(kind, unique(f"{kind[:3]}-")) for kind in kinds])

    wired.proxy.calls.clear()
    response = await wired.profile.BatchTrackEvents(
        profile_pb2.BatchTrackEventsRequest(events=[crowded() for _ in range(1000)])
    )
    assert response.recorded_count == 1000
    assert wired.proxy.calls == Counter({"BatchResolvePersons": 2})


async def test_identity_gets_no_more_time_than_profiles_caller_has_left(wired: Wired) -> None:
    wired.proxy.time_left.clear()
    wired.proxy.delay_s = 4.0
    try:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await wired.profile.TrackEvent(
                profile_pb2.TrackEventRequest(event=_new_customer_event()), timeout=1.0
            )
        waited = time.monotonic() - started
    finally:
        wired.proxy.delay_s = 0.0
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert waited < 3.0
    # Identity was told the caller's deadline (to the millisecond it travels in), not profile's own 5 s: it
    # can give up when the caller has.
    [left] = wired.proxy.time_left
    assert left is not None and left <= 1.01


async def test_without_a_caller_deadline_identity_gets_the_configured_time(wired: Wired) -> None:
    wired.proxy.time_left.clear()
    for timeout in (None, 60.0):
        await wired.profile.TrackEvent(
            profile_pb2.TrackEventRequest(event=_new_customer_event()), timeout=timeout
        )
    assert all(left is not None and 4.0 < left <= 5.1 for left in wired.proxy.time_left), (
        wired.proxy.time_left
    )
    assert len(wired.proxy.time_left) == 2


# 300 of 500 events carry an address at the reserved .test domain, a placeholder identity refuses: as one error
# listing every violation, identity's refusal was ~25 KB of trailers, past gRPC's limit, and profile failed the
# whole batch (or stream) instead of rejecting those 300.
_REFUSED = set(range(0, 500, 5)) | set(range(1, 500, 5)) | set(range(2, 500, 5))


def _mixed_events() -> list[profile_pb2.Event]:
    return [
        event(
            identifiers=[
                ident("anonymous_id", unique("anon-")),
                ident("email", f"{unique('p')}@shop.test" if i in _REFUSED else f"{unique('g')}@example.com"),
            ]
        )
        for i in range(500)
    ]


async def test_a_batch_with_300_refused_identifiers_records_the_200_good_events(wired: Wired) -> None:
    wired.proxy.calls.clear()
    events = _mixed_events()
    response = await wired.profile.BatchTrackEvents(profile_pb2.BatchTrackEventsRequest(events=events))

    assert (response.recorded_count, response.rejected_count) == (200, 300)
    for index, result in enumerate(response.results):
        if index in _REFUSED:
            assert result.status == profile_pb2.TRACK_STATUS_REJECTED and not result.person_id
            assert result.reason == "INVALID_ARGUMENT"
            [violation] = result.field_violations
            assert violation.field == "identifiers[1].value" and "placeholder" in violation.description
        else:
            assert result.status == profile_pb2.TRACK_STATUS_RECORDED and result.person_id
    # One call names every refused set: no call per refusal, no retry without them.
    assert wired.proxy.calls == Counter({"BatchResolvePersons": 1})


async def test_a_stream_with_300_refused_identifiers_keeps_the_200_good_events(wired: Wired) -> None:
    events = _mixed_events()

    async def messages() -> AsyncIterator[profile_pb2.StreamTrackEventsRequest]:
        for start in range(0, 500, 100):
            yield profile_pb2.StreamTrackEventsRequest(events=events[start : start + 100])

    response = await wired.profile.StreamTrackEvents(messages())
    assert (response.accepted, response.rejected) == (200, 300)
    assert sorted(e.position for e in response.errors) == sorted(_REFUSED)
    assert all(e.reason == "INVALID_ARGUMENT" and e.field_violations for e in response.errors)
    assert {e.event_id for e in response.errors} == {events[i].id for i in _REFUSED}


async def test_an_http_batch_with_300_refused_identifiers_accepts_the_200_good_events(wired: Wired) -> None:
    wired.proxy.calls.clear()
    batch = [
        {
            "type": "track",
            "event": "Product Viewed",
            "messageId": unique("m-"),
            "anonymousId": unique("a-"),
            # A user id of only zeros is a placeholder identity refuses. (An email from the traits that identity
            # refuses only costs itself: the event is recorded without it, with a warning.)
            "userId": "0000000" if i in _REFUSED else unique("u-"),
        }
        for i in range(500)
    ]
    authorization = "Basic " + base64.b64encode(b"wk_web:").decode()
    async with wired.session.post(
        f"{wired.http}/v1/batch", json={"batch": batch}, headers={"Authorization": authorization}
    ) as answer:
        body = await answer.json()
        assert answer.status == 200, body
    assert (body["accepted"], body["rejected"]) == (200, 300)
    assert sorted(e["index"] for e in body["errors"]) == sorted(_REFUSED)
    assert all("placeholder" in e["fields"][0]["description"] for e in body["errors"])
    assert wired.proxy.calls["BatchResolvePersons"] == 1


async def test_an_event_with_a_hundred_refused_identifiers_lists_the_first_and_counts_the_rest(
    wired: Wired,
) -> None:
    crowded = event(identifiers=[ident("email", f"{unique('p')}@shop.test") for _ in range(100)])
    response = await wired.profile.BatchTrackEvents(
        profile_pb2.BatchTrackEventsRequest(events=[crowded, _new_customer_event()])
    )
    refused, recorded = response.results
    assert recorded.status == profile_pb2.TRACK_STATUS_RECORDED
    assert refused.status == profile_pb2.TRACK_STATUS_REJECTED
    assert len(refused.field_violations) == MAX_FIELD_VIOLATIONS
    assert [v.field for v in refused.field_violations[:-1]] == [
        f"identifiers[{i}].value" for i in range(MAX_FIELD_VIOLATIONS - 1)
    ]
    assert (
        refused.field_violations[-1].description
        == f"{100 - MAX_FIELD_VIOLATIONS + 1} more violations left out"
    )
