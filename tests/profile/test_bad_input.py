"""Every kind of bad input over gRPC: the right status, field violations naming the culprit, nothing written."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from omni.common.v1 import common_pb2
from omni.profile.v1 import profile_pb2, profile_pb2_grpc
from omni_kit.db import create_engine
from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres
from omni_kit.embedded.ports import free_port
from omni_kit.errors import StatusDetails, status_details
from omni_profile import main as profile_main
from omni_profile import paging

from .support import COMMON, Services, close_runtime, event, ident, item, struct, track

Call = Callable[[Services], Awaitable[Any]]


async def _refused(services: Services, call: Call) -> StatusDetails:
    before = await services.counts()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(services)
    assert await services.counts() == before, "a refused request must write nothing"
    return status_details(raised.value)


def _track(message: profile_pb2.Event) -> Call:
    return lambda services: track(services, message)


def _batch(*messages: profile_pb2.Event) -> Call:
    return lambda services: services.profile.BatchTrackEvents(
        profile_pb2.BatchTrackEventsRequest(events=messages)
    )


def _with(message: profile_pb2.Event, change: Callable[[profile_pb2.Event], object]) -> profile_pb2.Event:
    change(message)
    return message


NOW = datetime.now(UTC)
UNKNOWN = str(uuid.UUID(int=7))

INVALID_TRACKING = {
    "no event": (lambda s: s.profile.TrackEvent(profile_pb2.TrackEventRequest()), {"event"}),
    "no id": (_track(event(id_="")), {"event.id"}),
    "id too long": (_track(event(id_="e" * 129)), {"event.id"}),
    "no type": (_track(event("")), {"event.type"}),
    "type not snake case": (_track(event("PageViewed")), {"event.type"}),
    "no identifiers nor person": (_track(event(identifiers=[])), {"event.identifiers"}),
    "identifier without value": (
        _track(event(identifiers=[ident("email", "")])),
        {"event.identifiers[0].value"},
    ),
    "person id not a uuid": (_track(event(identifiers=[], person_id="p-1")), {"event.person_id"}),
    "malformed email (identity judges)": (
        _track(event(identifiers=[ident("anonymous_id", "c-1"), ident("email", "not-an-email")])),
        {"event.identifiers[1].value"},
    ),
    "unknown identifier type (identity judges)": (
        _track(event(identifiers=[ident("shoe_size", "42")])),
        {"event.identifiers[0].type"},
    ),
    "occurred in the far future": (_track(event(occurred_at=NOW + timedelta(days=2))), {"event.occurred_at"}),
    "occurred in the far past": (
        _track(event(occurred_at=NOW - timedelta(days=6 * 365))),
        {"event.occurred_at"},
    ),
    "malformed timestamp (nanos out of range)": (
        _track(_with(event(), lambda m: setattr(m.occurred_at, "nanos", 2_000_000_000))),
        {"event.occurred_at"},
    ),
    "unknown channel number": (
        _track(_with(event(), lambda m: setattr(m, "channel", 99))),
        {"event.channel"},
    ),
    "malformed source": (_track(_with(event(), lambda m: setattr(m, "source", "Web SDK"))), {"event.source"}),
    "oversize properties": (_track(event(properties={"blob": "x" * 40_000})), {"event.properties"}),
    "oversize context": (
        _track(_with(event(), lambda m: m.context.update({"blob": "x" * 9000}))),
        {"event.context"},
    ),
    "cart event without cart item": (_track(event("cart_item_added")), {"event.cart_item"}),
    "cart item without product": (
        _track(event("cart_item_removed", cart_item=common_pb2.CartItem(quantity=1))),
        {"event.cart_item.product_id"},
    ),
    "cart item with quantity 0": (
        _track(event("cart_item_added", cart_item=item("sku-1", 0))),
        {"event.cart_item.quantity"},
    ),
    "cart item with a quantity past a million": (
        _track(event("cart_item_added", cart_item=item("sku-1", 1_000_001))),
        {"event.cart_item.quantity"},
    ),
    "cart item with a NUL in its product id": (
        _track(event("cart_item_added", cart_item=item("sku-\x00", 1))),
        {"event.cart_item.product_id"},
    ),
    "cart item with a control character in its name": (
        _track(event("cart_item_added", cart_item=item("sku-1", 1, name="Boots\x00"))),
        {"event.cart_item.name"},
    ),
    "cart item with an oversize name": (
        _track(event("cart_item_added", cart_item=item("sku-1", 1, name="B" * 1025))),
        {"event.cart_item.name"},
    ),
    "event type ending in a line break": (_track(event("page_viewed\n")), {"event.type"}),
    "empty batch": (_batch(), {"events"}),
    "batch over 1000": (_batch(*[event() for _ in range(1001)]), {"events"}),
}


@pytest.mark.parametrize("case", INVALID_TRACKING)
async def test_invalid_tracking_is_refused(services: Services, case: str) -> None:
    call, fields = INVALID_TRACKING[case]
    details = await _refused(services, call)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == fields
    assert details.error_info is not None
    assert details.error_info.domain == "omni.profile"


def _results(response: profile_pb2.BatchTrackEventsResponse) -> list[tuple[str, set[str]]]:
    return [
        (profile_pb2.TrackStatus.Name(r.status), {v.field for v in r.field_violations})
        for r in response.results
    ]


async def test_bad_events_of_a_batch_are_reported_and_the_good_ones_recorded(services: Services) -> None:
    good = [event(), event("product_viewed"), event()]
    batch = [
        good[0],
        event(id_=""),
        good[1],
        event("cart_item_added"),
        event(occurred_at=NOW + timedelta(days=3)),
        event(properties={"blob": "x" * 40_000}),
        event(identifiers=[ident("phone", "12")]),
        good[2],
    ]
    response = await services.profile.BatchTrackEvents(profile_pb2.BatchTrackEventsRequest(events=batch))
    assert _results(response) == [
        ("TRACK_STATUS_RECORDED", set()),
        ("TRACK_STATUS_REJECTED", {"id"}),
        ("TRACK_STATUS_RECORDED", set()),
        ("TRACK_STATUS_REJECTED", {"cart_item"}),
        ("TRACK_STATUS_REJECTED", {"occurred_at"}),
        ("TRACK_STATUS_REJECTED", {"properties"}),
        ("TRACK_STATUS_REJECTED", {"identifiers[0].value"}),
        ("TRACK_STATUS_RECORDED", set()),
    ]
    assert (response.recorded_count, response.duplicate_count, response.rejected_count) == (3, 0, 5)
    rejected = response.results[6]
    assert not rejected.person_id and not rejected.duplicate
    for message in good:
        assert await services.scalar("SELECT count(*) FROM events WHERE id = :id", id=message.id) == 1
    for message in batch[3:7]:
        assert await services.scalar("SELECT count(*) FROM events WHERE id = :id", id=message.id) == 0
    # A rejected event can be fixed and sent again.
    fixed = event(id_=batch[6].id, identifiers=[ident("phone", "+4722334455")])
    assert not (await track(services, fixed)).duplicate


async def test_identifiers_beside_a_person_id_hold_no_control_characters(services: Services) -> None:
    # Identity, which refuses them, is not asked when the event names its person: profile must refuse them
    # itself (they reached the events' JSONB, which cannot hold a NUL: INTERNAL, and the whole batch lost).
    person_id = (await track(services, event())).person_id
    bad_value = event(identifiers=[ident("email", "ada@example.com\x00")], person_id=person_id)
    details = await _refused(services, _track(bad_value))
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == {"event.identifiers[0].value"}
    bad_type = event(identifiers=[ident("device_id\x1b", "d-1")], person_id=person_id)
    good = event(person_id=person_id)
    response = await services.profile.BatchTrackEvents(
        profile_pb2.BatchTrackEventsRequest(events=[bad_type, good])
    )
    assert _results(response) == [
        ("TRACK_STATUS_REJECTED", {"identifiers[0].type"}),
        ("TRACK_STATUS_RECORDED", set()),
    ]


async def test_a_batch_whose_every_event_identity_refuses_records_nothing(services: Services) -> None:
    before = await services.counts()
    response = await services.profile.BatchTrackEvents(
        profile_pb2.BatchTrackEventsRequest(
            events=[event(identifiers=[ident("email", "@@")]), event(identifiers=[ident("phone", "1")])]
        )
    )
    assert [s for s, _ in _results(response)] == ["TRACK_STATUS_REJECTED"] * 2
    assert await services.counts() == before


def _timeline_token() -> str:
    return paging.encode(UNKNOWN, paging.TimelinePosition(NOW, "evt-1", "api"))


INVALID_REQUESTS = {
    "traits without person": (
        lambda s: s.profile.SetTraits(profile_pb2.SetTraitsRequest(traits=struct({"a": 1}))),
        {"person_id"},
    ),
    "traits with no traits": (
        lambda s: s.profile.SetTraits(profile_pb2.SetTraitsRequest(person_id=UNKNOWN)),
        {"traits"},
    ),
    "consent without channel and state": (
        lambda s: s.profile.SetConsent(
            profile_pb2.SetConsentRequest(person_id=UNKNOWN, consent=profile_pb2.Consent(source="web"))
        ),
        {"consent.channel", "consent.state"},
    ),
    "consent missing": (
        lambda s: s.profile.SetConsent(profile_pb2.SetConsentRequest(person_id=UNKNOWN)),
        {"consent"},
    ),
    "profile of a malformed id": (
        lambda s: s.profile.GetProfile(profile_pb2.GetProfileRequest(person_id="42")),
        {"person_id"},
    ),
    "timeline with a malformed token": (
        lambda s: s.profile.ListTimeline(
            profile_pb2.ListTimelineRequest(person_id=UNKNOWN, page_token="%%%")
        ),
        {"page_token"},
    ),
    "trait of the wrong type (vip must be a boolean)": (
        lambda s: s.profile.SetTraits(
            profile_pb2.SetTraitsRequest(
                person_id=UNKNOWN, traits=struct({"vip": "yes", "birthday": "12/10"})
            )
        ),
        {"traits.vip", "traits.birthday"},
    ),
    "traits with a NUL in a value, a key and a list item, and a control character in the source": (
        lambda s: s.profile.SetTraits(
            profile_pb2.SetTraitsRequest(
                person_id=UNKNOWN,
                traits=struct({"note": "a\x00b", "k\x00": 1, "tags": ["ok", "x\x00"], "bio": "line\nbreak"}),
                source="crm\x00",
            )
        ),
        {"traits", "traits.note", "traits.tags[1]", "source"},
    ),
    "a birthday or email trait ending in a line break": (
        lambda s: s.profile.SetTraits(
            profile_pb2.SetTraitsRequest(
                person_id=UNKNOWN, traits=struct({"birthday": "1990-01-02\n", "email": "ada@shop.example\n"})
            )
        ),
        {"traits.birthday", "traits.email"},
    ),
    "consent with a control character in its source": (
        lambda s: s.profile.SetConsent(
            profile_pb2.SetConsentRequest(
                person_id=UNKNOWN,
                consent=profile_pb2.Consent(
                    channel=common_pb2.CHANNEL_EMAIL,
                    state=profile_pb2.CONSENT_STATE_GRANTED,
                    source="web\x00",
                ),
            )
        ),
        {"consent.source"},
    ),
    "computed trait with a line break ending its name and event type": (
        lambda s: s.profile.CreateComputedTrait(
            profile_pb2.CreateComputedTraitRequest(
                computed_trait=profile_pb2.ComputedTrait(
                    name="orders_total\n",
                    kind=profile_pb2.COMPUTED_TRAIT_KIND_COUNT,
                    event_type="order_completed\n",
                )
            )
        ),
        {"computed_trait.name", "computed_trait.event_type"},
    ),
    "double opt-in on sms": (
        lambda s: s.profile.SetConsent(
            profile_pb2.SetConsentRequest(
                person_id=UNKNOWN,
                consent=profile_pb2.Consent(
                    channel=common_pb2.CHANNEL_SMS,
                    state=profile_pb2.CONSENT_STATE_GRANTED,
                    double_opt_in=profile_pb2.DOUBLE_OPT_IN_STATE_PENDING_CONFIRMATION,
                ),
            )
        ),
        {"consent.double_opt_in"},
    ),
    "consent for the webhook, which reaches the retailer's systems, not the person": (
        lambda s: s.profile.SetConsent(
            profile_pb2.SetConsentRequest(
                person_id=UNKNOWN,
                consent=profile_pb2.Consent(
                    channel=common_pb2.CHANNEL_WEBHOOK, state=profile_pb2.CONSENT_STATE_GRANTED
                ),
            )
        ),
        {"consent.channel"},
    ),
    "computed trait without a kind": (
        lambda s: s.profile.CreateComputedTrait(
            profile_pb2.CreateComputedTraitRequest(computed_trait=profile_pb2.ComputedTrait(name="x_total"))
        ),
        {"computed_trait.kind"},
    ),
    "trait history with a timeline token": (
        lambda s: s.profile.ListTraitHistory(
            profile_pb2.ListTraitHistoryRequest(person_id=UNKNOWN, page_token=_timeline_token())
        ),
        {"page_token"},
    ),
    "trait history with a NUL in the trait's name": (
        lambda s: s.profile.ListTraitHistory(
            profile_pb2.ListTraitHistoryRequest(person_id=UNKNOWN, trait_name="tier\x00")
        ),
        {"trait_name"},
    ),
    "timeline with a negative page size": (
        lambda s: s.profile.ListTimeline(profile_pb2.ListTimelineRequest(person_id=UNKNOWN, page_size=-1)),
        {"page_size"},
    ),
}


@pytest.mark.parametrize("case", INVALID_REQUESTS)
async def test_invalid_requests_are_refused(services: Services, case: str) -> None:
    call, fields = INVALID_REQUESTS[case]
    details = await _refused(services, call)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == fields


UNKNOWN_PERSON = {
    "traits": lambda s: s.profile.SetTraits(
        profile_pb2.SetTraitsRequest(person_id=UNKNOWN, traits=struct({"a": 1}))
    ),
    "consent": lambda s: s.profile.SetConsent(
        profile_pb2.SetConsentRequest(
            person_id=UNKNOWN,
            consent=profile_pb2.Consent(
                channel=common_pb2.CHANNEL_EMAIL, state=profile_pb2.CONSENT_STATE_GRANTED
            ),
        )
    ),
    "profile": lambda s: s.profile.GetProfile(profile_pb2.GetProfileRequest(person_id=UNKNOWN)),
    "timeline": lambda s: s.profile.ListTimeline(profile_pb2.ListTimelineRequest(person_id=UNKNOWN)),
    "trait history": lambda s: s.profile.ListTraitHistory(
        profile_pb2.ListTraitHistoryRequest(person_id=UNKNOWN)
    ),
    "consent history": lambda s: s.profile.ListConsentHistory(
        profile_pb2.ListConsentHistoryRequest(person_id=UNKNOWN)
    ),
}


@pytest.mark.parametrize("case", UNKNOWN_PERSON)
async def test_an_unknown_person_is_not_found(services: Services, case: str) -> None:
    details = await _refused(services, UNKNOWN_PERSON[case])
    assert details.code == grpc.StatusCode.NOT_FOUND
    assert details.error_info is not None
    assert details.error_info.reason == "PERSON_NOT_FOUND"


async def test_identity_down_answers_unavailable_and_writes_nothing(
    services: Services, postgres: EmbeddedPostgres, nats_server: EmbeddedNats
) -> None:
    database = f"profile_down_{uuid.uuid4().hex[:12]}"
    postgres.create_database(database)
    runtime = await profile_main.start(
        profile_main.Settings.model_validate(
            {
                **COMMON,
                "database_url": postgres.url(database),
                "nats_url": nats_server.url,
                "event_namespace": services.namespace,
                "identity_target": f"127.0.0.1:{free_port()}",
                "identity_timeout_s": 1.0,
            }
        )
    )
    engine = create_engine(postgres.url(database), application_name="omni-test-profile")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}") as channel:
            stub = profile_pb2_grpc.ProfileServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.TrackEvent(profile_pb2.TrackEventRequest(event=event()))
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
            async with engine.connect() as connection:
                assert await connection.scalar(sa.text("SELECT count(*) FROM events")) == 0
            # Nor can an event naming a person profile has never seen: only identity could vouch for it.
            with pytest.raises(grpc.aio.AioRpcError) as unchecked:
                await stub.TrackEvent(profile_pb2.TrackEventRequest(event=event(person_id=UNKNOWN)))
            assert unchecked.value.code() == grpc.StatusCode.UNAVAILABLE
            # An event naming a person profile holds needs no identity.
            async with engine.begin() as connection:
                await connection.execute(
                    sa.text("INSERT INTO profiles (person_id) VALUES (CAST(:p AS uuid))"), {"p": UNKNOWN}
                )
            known = await stub.TrackEvent(profile_pb2.TrackEventRequest(event=event(person_id=UNKNOWN)))
            assert known.person_id == UNKNOWN
    finally:
        await engine.dispose()
        await close_runtime(runtime)
        postgres.drop_database(database)
