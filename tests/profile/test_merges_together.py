"""Merges that arrive together are applied together, with the outcome of applying them one by one: a run of
usual merges is written in a few statements, and a merge that brings traits or touches a person the run
touched is applied on its own in its place."""

from __future__ import annotations

import asyncio
import json
import uuid

from omni.common.v1 import common_pb2
from omni.events.v1 import envelope_pb2
from omni.identity.v1 import events_pb2 as identity_events
from omni.profile.v1 import events_pb2, profile_pb2
from omni_kit.bus import make_envelope, outbox_rows, unpack

from .support import Services, cart_of, event, get_profile, item, new_person, struct, track

MERGED = "identity.persons_merged"


def _merge(survivor: uuid.UUID, *merged: uuid.UUID) -> envelope_pb2.Envelope:
    payload = identity_events.PersonsMergedEvent(
        survivor_person_id=str(survivor),
        merged_person_ids=[str(m) for m in merged],
        cause_identifiers=[common_pb2.Identifier(type="email", value=f"{survivor}@example.com")],
    )
    return make_envelope(payload, event_type=MERGED, producer="identity", person_id=str(survivor))


async def _publish_as_one_message(services: Services, envelopes: list[envelope_pb2.Envelope]) -> None:
    """Publish the events as identity's relay does a run of one type: one message, one transaction."""
    rows = outbox_rows(envelopes, services.namespace)
    assert len(rows.ids) == 1
    headers = {**json.loads(rows.headers[0]), "Nats-Msg-Id": str(rows.ids[0])}
    await services.js.publish(rows.subjects[0], rows.payloads[0], headers=headers)


async def _merged_into(services: Services, person: uuid.UUID) -> str | None:
    value = await services.scalar("SELECT merged_into FROM profiles WHERE person_id = :p", p=person)
    return None if value is None else str(value)


async def _events_of(services: Services, person: uuid.UUID) -> int:
    return int(await services.scalar("SELECT count(*) FROM events WHERE person_id = :p", p=person))


def _announced(survivor: uuid.UUID, merged: uuid.UUID):  # type: ignore[no-untyped-def]
    """Matches the profile_changed of the survivor of one merge."""

    def matches(envelope: envelope_pb2.Envelope) -> bool:
        if envelope.type != "profile.profile_changed":
            return False
        payload = unpack(envelope, events_pb2.ProfileChangedEvent)
        return payload.person_id == str(survivor) and list(payload.merged_person_ids) == [str(merged)]

    return matches


async def test_merges_in_one_message_end_as_one_by_one(services: Services) -> None:
    a, b, c, d, e, f, g, h = [await new_person(services) for _ in range(8)]
    carts = {a: item("sku-1", 1), b: item("sku-1", 2), e: item("sku-2", 1)}
    for person in (a, b, b, c, d, e, f, g, h):
        cart_item = carts.pop(person, None)
        kind = "page_viewed" if cart_item is None else "cart_item_added"
        await track(services, event(kind, person_id=str(person), cart_item=cart_item))
    await services.profile.SetTraits(
        profile_pb2.SetTraitsRequest(person_id=str(g), traits=struct({"tier": "gold"}), source="crm")
    )

    merges = [
        _merge(a, b),  # usual: starts a run
        _merge(c, d),  # usual, shares no person with the first: same run
        _merge(e, a),  # a was the first's survivor: applied after the run, on its own
        _merge(f, g),  # g has traits: on its own
        _merge(h, b),  # b is merged already (into a, now e): nothing left to move
        _merge(h, c),  # usual: a new run
    ]
    await _publish_as_one_message(services, merges)

    found = await asyncio.gather(
        *(
            services.events.wait_for(_announced(survivor, merged))
            for survivor, merged in [(a, b), (c, d), (e, a), (f, g), (h, c)]
        )
    )
    assert all(len(envelopes) == 1 for envelopes in found)
    first = unpack(found[0][0], events_pb2.ProfileChangedEvent)
    assert {"events", "cart"} <= set(first.changed)
    assert {line.product_id: line.quantity for line in first.cart.items} == {"sku-1": 3}

    # Everything of a and b is on e; of c and d on h; g's traits and events on f.
    survivor_e = await get_profile(services, str(e))
    assert (survivor_e.event_count, cart_of(survivor_e)) == (4, {"sku-1": 3, "sku-2": 1})
    survivor_h = await get_profile(services, str(h))
    assert (survivor_h.event_count, cart_of(survivor_h)) == (3, {})
    survivor_f = await get_profile(services, str(f))
    assert survivor_f.event_count == 2 and dict(survivor_f.traits) == {"tier": "gold"}
    assert [await _events_of(services, p) for p in (a, b, c, d, e, f, g, h)] == [0, 0, 0, 0, 4, 2, 0, 3]
    # Every merged id leads to its survivor directly (b was re-pointed when a merged into e).
    assert [await _merged_into(services, p) for p in (a, b, c, d, g)] == [
        str(e),
        str(e),
        str(h),
        str(h),
        str(f),
    ]
    assert [await _merged_into(services, p) for p in (e, f, h)] == [None, None, None]
    assert (await get_profile(services, str(b))).person_id == str(e)
    # Merged rows keep no state of their own.
    for person in (a, b, c, d):
        assert await services.scalar(
            "SELECT event_count = 0 AND cart = '{}'::jsonb AND computed = '{}'::jsonb FROM profiles "
            "WHERE person_id = :p",
            p=person,
        )


async def test_a_merged_persons_trait_history_moves_even_without_traits_left(services: Services) -> None:
    # m set a trait and removed it (history, no trait); its consent sends the merge down the one-by-one path,
    # n (no consent) down the run's.
    survivor, m, n = [await new_person(services) for _ in range(3)]
    for person in (survivor, m, n):
        await track(services, event(person_id=str(person)))
    for person in (m, n):
        for value in ("gold", None):
            await services.profile.SetTraits(
                profile_pb2.SetTraitsRequest(
                    person_id=str(person), traits=struct({"tier": value}), source="crm"
                )
            )
    await services.profile.SetConsent(
        profile_pb2.SetConsentRequest(
            person_id=str(m),
            consent=profile_pb2.Consent(
                channel=common_pb2.CHANNEL_EMAIL, state=profile_pb2.CONSENT_STATE_GRANTED, source="test"
            ),
        )
    )
    await _publish_as_one_message(services, [_merge(survivor, m), _merge(survivor, n)])

    def history(person: uuid.UUID):  # type: ignore[no-untyped-def]
        return services.scalar("SELECT count(*) FROM trait_changes WHERE person_id = :p", p=person)

    await services.events.wait_for(_announced(survivor, m))
    await services.events.wait_for(_announced(survivor, n))
    assert [await history(p) for p in (m, n, survivor)] == [0, 0, 4]
    assert dict((await get_profile(services, str(survivor))).traits) == {}
