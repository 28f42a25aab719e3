"""Consumed events: identity's persons_merged (from the real identity service) and gateway message outcomes."""

from __future__ import annotations

from datetime import UTC, datetime

from omni.common.v1 import common_pb2
from omni.events.v1 import envelope_pb2
from omni.gateway.v1 import events_pb2 as gateway_events
from omni.gateway.v1 import gateway_pb2
from omni.profile.v1 import events_pb2, profile_pb2
from omni_kit.bus import unpack

from .support import (
    Services,
    cart_of,
    event,
    gateway_message,
    get_profile,
    ident,
    item,
    publish_outcome,
    struct,
    track,
    tracked_with_id,
    unique,
)


def _consent(
    person: str, channel: common_pb2.Channel.ValueType, state: profile_pb2.ConsentState.ValueType
) -> profile_pb2.SetConsentRequest:
    return profile_pb2.SetConsentRequest(
        person_id=person, consent=profile_pb2.Consent(channel=channel, state=state, source="test")
    )


def _merge_announced(survivor: str):  # type: ignore[no-untyped-def]
    def matches(envelope: envelope_pb2.Envelope) -> bool:
        if envelope.type != "profile.profile_changed":
            return False
        payload = unpack(envelope, events_pb2.ProfileChangedEvent)
        return payload.person_id == survivor and len(payload.merged_person_ids) > 0

    return matches


async def test_a_merge_by_identity_moves_everything_to_the_survivor(services: Services) -> None:
    cookie, device = unique("cookie-"), unique("device-")
    web = (await track(services, event("page_viewed", identifiers=[ident("anonymous_id", cookie)]))).person_id
    await track(services, event("cart_item_added", person_id=web, cart_item=item("sku-1", 1, name="Boots")))
    await services.profile.SetTraits(
        profile_pb2.SetTraitsRequest(person_id=web, traits=struct({"first_name": "Ada", "city": "Oslo"}))
    )
    await services.profile.SetConsent(
        _consent(web, common_pb2.CHANNEL_EMAIL, profile_pb2.CONSENT_STATE_GRANTED)
    )

    app = (
        await track(
            services,
            event("app_opened", identifiers=[ident("device_id", device)], channel=common_pb2.CHANNEL_APP),
        )
    ).person_id
    assert app != web
    await track(services, event("cart_item_added", person_id=app, cart_item=item("sku-1", 2)))
    await track(services, event("cart_item_added", person_id=app, cart_item=item("sku-2", 1, name="Hat")))
    await services.profile.SetTraits(
        profile_pb2.SetTraitsRequest(person_id=app, traits=struct({"first_name": "A.", "tier": "gold"}))
    )
    await services.profile.SetConsent(
        _consent(app, common_pb2.CHANNEL_EMAIL, profile_pb2.CONSENT_STATE_REVOKED)
    )
    await services.profile.SetConsent(
        _consent(app, common_pb2.CHANNEL_SMS, profile_pb2.CONSENT_STATE_GRANTED)
    )

    # Logging in on the app with the web cookie links both: identity merges and announces it.
    login = await track(
        services,
        event(
            "logged_in",
            identifiers=[ident("device_id", device), ident("anonymous_id", cookie)],
            channel=common_pb2.CHANNEL_APP,
        ),
    )
    survivor = login.person_id
    assert survivor in {web, app}
    merged = app if survivor == web else web
    [announcement] = await services.events.wait_for(_merge_announced(survivor))
    payload = unpack(announcement, events_pb2.ProfileChangedEvent)
    assert list(payload.merged_person_ids) == [merged]
    assert {"events", "traits", "cart", "consents"} <= set(payload.changed)
    assert {i.product_id: i.quantity for i in payload.cart.items} == {"sku-1": 3, "sku-2": 1}

    profile = await get_profile(services, survivor, recent=50)
    assert profile.event_count == 6
    assert {e.person_id for e in profile.recent_events} == {survivor}
    assert cart_of(profile) == {"sku-1": 3, "sku-2": 1}
    survivor_name = "Ada" if survivor == web else "A."
    assert dict(profile.traits) == {"first_name": survivor_name, "city": "Oslo", "tier": "gold"}
    assert {(c.channel, c.state) for c in profile.consents} == {
        (common_pb2.CHANNEL_EMAIL, profile_pb2.CONSENT_STATE_REVOKED),
        (common_pb2.CHANNEL_SMS, profile_pb2.CONSENT_STATE_GRANTED),
    }
    assert (
        await services.scalar(
            "SELECT count(*) FROM consent_history WHERE person_id = CAST(:p AS uuid)", p=survivor
        )
        == 3
    )
    for table in ("events", "traits", "trait_changes", "consents", "consent_history"):
        left = await services.scalar(
            f"SELECT count(*) FROM {table} WHERE person_id = CAST(:p AS uuid)", p=merged
        )
        assert left == 0, table
    assert (
        await services.scalar("SELECT cart FROM profiles WHERE person_id = CAST(:p AS uuid)", p=merged) == {}
    )

    # The merged id still leads to the survivor, for reads and for senders that kept it.
    assert (await get_profile(services, merged)).person_id == survivor
    late = await track(services, event("email_opened", person_id=merged, channel=common_pb2.CHANNEL_EMAIL))
    assert late.person_id == survivor
    assert (await get_profile(services, survivor)).event_count == 7


async def test_a_sent_message_appears_on_the_timeline_once(services: Services) -> None:
    person = (await track(services, event("page_viewed"))).person_id
    message = gateway_message(person, gateway_pb2.MESSAGE_STATUS_SENT)
    await publish_outcome(
        services, gateway_events.MessageSentEvent(message=message), "gateway.message_sent", person
    )
    [announced] = await services.events.wait_for(tracked_with_id(f"gateway:{message.id}"))
    recorded = unpack(announced, events_pb2.EventTrackedEvent).event
    assert recorded.type == "message_sent"
    assert recorded.person_id == person

    page = await services.profile.ListTimeline(profile_pb2.ListTimelineRequest(person_id=person))
    sent = page.events[0]
    assert sent.id == f"gateway:{message.id}"
    assert sent.type == "message_sent"
    assert sent.channel == common_pb2.CHANNEL_EMAIL
    assert sent.occurred_at == message.update_time
    assert dict(sent.properties) == {
        "message_id": message.id,
        "template_id": "abandoned-cart-email",
        "journey_id": "journey-1",
        "status": "sent",
        "error": "",
    }

    # The same outcome again, in a new envelope (a gateway retry): recorded once.
    await publish_outcome(
        services, gateway_events.MessageSentEvent(message=message), "gateway.message_sent", person
    )
    marker = gateway_message(person, gateway_pb2.MESSAGE_STATUS_SENT)
    await publish_outcome(
        services, gateway_events.MessageSentEvent(message=marker), "gateway.message_sent", person
    )
    await services.events.wait_for(tracked_with_id(f"gateway:{marker.id}"))
    assert len(services.events.matching(tracked_with_id(f"gateway:{message.id}"))) == 1
    assert (await get_profile(services, person)).event_count == 3


async def test_a_failed_message_is_recorded_with_its_error(services: Services) -> None:
    person = (await track(services, event("page_viewed"))).person_id
    message = gateway_message(person, gateway_pb2.MESSAGE_STATUS_FAILED, error="550 mailbox unavailable")
    await publish_outcome(
        services, gateway_events.MessageFailedEvent(message=message), "gateway.message_failed", person
    )
    await services.events.wait_for(tracked_with_id(f"gateway:{message.id}"))
    profile = await get_profile(services, person)
    failed = profile.recent_events[0]
    assert failed.type == "message_failed"
    assert failed.properties["status"] == "failed"
    assert failed.properties["error"] == "550 mailbox unavailable"


async def test_an_outcome_without_a_person_is_skipped_and_the_next_one_applies(services: Services) -> None:
    person = (await track(services, event("page_viewed"))).person_id
    orphan = gateway_message("", gateway_pb2.MESSAGE_STATUS_SENT)
    await publish_outcome(
        services, gateway_events.MessageSentEvent(message=orphan), "gateway.message_sent", ""
    )
    after = gateway_message(person, gateway_pb2.MESSAGE_STATUS_SENT)
    await publish_outcome(
        services, gateway_events.MessageSentEvent(message=after), "gateway.message_sent", person
    )
    await services.events.wait_for(tracked_with_id(f"gateway:{after.id}"))
    assert await services.scalar("SELECT count(*) FROM events WHERE id = :id", id=f"gateway:{orphan.id}") == 0


async def test_an_outcome_for_a_merged_person_lands_on_the_survivor(services: Services) -> None:
    cookie, device = unique("cookie-"), unique("device-")
    first = (await track(services, event(identifiers=[ident("anonymous_id", cookie)]))).person_id
    second = (await track(services, event(identifiers=[ident("device_id", device)]))).person_id
    survivor = (
        await track(services, event(identifiers=[ident("anonymous_id", cookie), ident("device_id", device)]))
    ).person_id
    merged = second if survivor == first else first
    await services.events.wait_for(_merge_announced(survivor))
    message = gateway_message(merged, gateway_pb2.MESSAGE_STATUS_SENT)
    await publish_outcome(
        services, gateway_events.MessageSentEvent(message=message), "gateway.message_sent", merged
    )
    [announced] = await services.events.wait_for(tracked_with_id(f"gateway:{message.id}"))
    assert unpack(announced, events_pb2.EventTrackedEvent).event.person_id == survivor
    assert (await get_profile(services, survivor)).event_count == 4


async def test_an_open_receipt_is_an_email_opened_event_and_sets_last_email_open_at(
    services: Services,
) -> None:
    person = (await track(services, event("page_viewed"))).person_id
    message = gateway_message(person, gateway_pb2.MESSAGE_STATUS_SENT)
    receipt = gateway_events.MessageReceiptEvent(
        message=message,
        kind=gateway_events.RECEIPT_KIND_OPENED,
        provider="smtp",
        provider_event_id=unique("open-"),
    )
    receipt.occur_time.FromDatetime(datetime(2026, 12, 1, 9, 30, tzinfo=UTC))
    await publish_outcome(services, receipt, "gateway.message_receipt", person)
    await services.events.wait_for(tracked_with_id(f"gateway:{message.id}:opened"))

    profile = await get_profile(services, person)
    [opened] = [e for e in profile.recent_events if e.id == f"gateway:{message.id}:opened"]
    assert opened.type == "email_opened"
    assert opened.channel == common_pb2.CHANNEL_EMAIL
    assert opened.properties["provider"] == "smtp"
    assert opened.properties["message_id"] == message.id
    assert dict(profile.computed_traits)["last_email_open_at"] == "2026-12-01T09:30:00Z"

    # The same receipt announced again (a redelivery): on the timeline once.
    await publish_outcome(services, receipt, "gateway.message_receipt", person)
    marker = gateway_message(person, gateway_pb2.MESSAGE_STATUS_SENT)
    await publish_outcome(
        services, gateway_events.MessageSentEvent(message=marker), "gateway.message_sent", person
    )
    await services.events.wait_for(tracked_with_id(f"gateway:{marker.id}"))
    assert len(services.events.matching(tracked_with_id(f"gateway:{message.id}:opened"))) == 1
