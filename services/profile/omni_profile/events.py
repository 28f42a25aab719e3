"""What profile publishes: the event types, and how they are staged.

Published (payloads in omni.profile.v1.events): profile.event_tracked for every newly recorded event,
profile.profile_changed when traits, computed traits or the cart change (or a merge or unmerge lands; only
the parts named in `changed` are filled; an unmerge lists the events it gave back), profile.consent_changed,
profile.person_erased; profile.contact_verdict_changed is staged by contact_verdicts.py. What profile
consumes, and the handlers, are in consumers.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from omni.profile.v1 import events_pb2
from omni_kit.bus import EncodedEnvelope, Outbox
from omni_kit.bus.envelope import length_delimited
from omni_profile import wire
from omni_profile.domain import CartLine, Consent, Event
from omni_profile.envelopes import EnvelopeBatch, new_ids, struct_bytes, type_url

EVENT_TRACKED = "profile.event_tracked"
PROFILE_CHANGED = "profile.profile_changed"
CONSENT_CHANGED = "profile.consent_changed"
PERSON_ERASED = "profile.person_erased"

MOVED_EVENT_IDS_PER_CHANGE = 2000
"""The most moved event ids one profile_changed lists (ids are at most 128 characters: some 260 KB, well
under a message's limit); an unmerge that moved more announces the rest in further changes."""

_TRACKED_TYPE_URL = type_url(events_pb2.EventTrackedEvent)
_CHANGED_TYPE_URL = type_url(events_pb2.ProfileChangedEvent)


def tracked_envelopes(batch: EnvelopeBatch, tracked: Sequence[Event]) -> list[EncodedEnvelope]:
    """The profile.event_tracked envelopes of newly recorded events."""
    return batch.wrap(
        new_ids(len(tracked)),
        EVENT_TRACKED,
        [(str(e.person_id), wire.tracked_event_bytes(e), e.occurred_at) for e in tracked],
        _TRACKED_TYPE_URL,
    )


def changed_envelopes(batch: EnvelopeBatch, payloads: Sequence[tuple[str, bytes]]) -> list[EncodedEnvelope]:
    """The profile.profile_changed envelopes of some encoded payloads: (person id, profile_changed_bytes)."""
    return batch.wrap(
        new_ids(len(payloads)),
        PROFILE_CHANGED,
        [(person_id, payload, None) for person_id, payload in payloads],
        _CHANGED_TYPE_URL,
    )


async def stage_events_tracked(session: AsyncSession, outbox: Outbox, tracked: Sequence[Event]) -> None:
    """Stage profile.event_tracked for each newly recorded event (one insert)."""
    if tracked:
        await outbox.add_envelopes(session, tracked_envelopes(EnvelopeBatch(outbox), tracked))


def profile_changed(
    person_id: uuid.UUID,
    *,
    changed: Sequence[str],
    traits: Mapping[str, Any] | None = None,
    cart: Iterable[CartLine] | None = None,
    computed_traits: Mapping[str, Any] | None = None,
    merged_person_ids: Sequence[uuid.UUID] = (),
    moved_event_ids: Sequence[str] = (),
    moved_from_person_id: uuid.UUID | None = None,
) -> events_pb2.ProfileChangedEvent:
    """The payload of profile.profile_changed with the parts after the change (each part given is filled;
    the person moved events came from only with them)."""
    payload = events_pb2.ProfileChangedEvent(
        person_id=str(person_id),
        changed=list(changed),
        merged_person_ids=[str(m) for m in merged_person_ids],
        moved_event_ids=list(moved_event_ids),
    )
    if moved_event_ids and moved_from_person_id is not None:
        payload.moved_from_person_id = str(moved_from_person_id)
    if traits is not None:
        payload.traits.update(dict(traits))
    if cart is not None:
        payload.cart.CopyFrom(wire.cart_to_proto(cart))
    if computed_traits is not None:
        payload.computed_traits.update(dict(computed_traits))
    return payload


def profile_changed_bytes(
    person_id: str,
    *,
    changed: Sequence[str],
    cart: Iterable[CartLine] | None = None,
    computed_traits: Mapping[str, Any] | None = None,
) -> bytes:
    """profile_changed's payload (without traits or merged persons), encoded without building the message
    (tracking announces one per changed person per batch): person_id = 1, cart = 3, changed = 4,
    computed_traits = 6."""
    parts = [length_delimited(1, person_id.encode())]
    if cart is not None:
        parts.append(length_delimited(3, wire.cart_to_proto(cart).SerializeToString()))
    parts.extend([length_delimited(4, part.encode()) for part in changed])
    if computed_traits:
        parts.append(length_delimited(6, struct_bytes(computed_traits)))
    return b"".join(parts)


async def stage_profile_changed(
    session: AsyncSession,
    outbox: Outbox,
    person_id: uuid.UUID,
    *,
    changed: Sequence[str],
    traits: Mapping[str, Any] | None = None,
    cart: Iterable[CartLine] | None = None,
    computed_traits: Mapping[str, Any] | None = None,
    merged_person_ids: Sequence[uuid.UUID] = (),
    moved_event_ids: Sequence[str] = (),
    moved_from_person_id: uuid.UUID | None = None,
) -> None:
    """Stage profile.profile_changed with the parts after the change (each part given is filled).

    Moved event ids beyond MOVED_EVENT_IDS_PER_CHANGE follow in further changes of the person that name
    only "events", each listing the next ids.
    """
    limit = MOVED_EVENT_IDS_PER_CHANGE
    payloads = [
        profile_changed(
            person_id,
            changed=changed,
            traits=traits,
            cart=cart,
            computed_traits=computed_traits,
            merged_person_ids=merged_person_ids,
            moved_event_ids=moved_event_ids[:limit],
            moved_from_person_id=moved_from_person_id,
        )
    ]
    payloads.extend(
        profile_changed(
            person_id,
            changed=["events"],
            moved_event_ids=moved_event_ids[start : start + limit],
            moved_from_person_id=moved_from_person_id,
        )
        for start in range(limit, len(moved_event_ids), limit)
    )
    await outbox.add_envelopes(
        session,
        [outbox.envelope(p, event_type=PROFILE_CHANGED, person_id=str(person_id)) for p in payloads],
    )


async def stage_consent_changed(
    session: AsyncSession, outbox: Outbox, person_id: uuid.UUID, consent: Consent
) -> None:
    """Stage profile.consent_changed with the consent as stored (its purpose included)."""
    payload = events_pb2.ConsentChangedEvent(person_id=str(person_id), consent=wire.consent_to_proto(consent))
    await outbox.add(session, payload, event_type=CONSENT_CHANGED, person_id=str(person_id))


async def stage_person_erased(
    session: AsyncSession,
    outbox: Outbox,
    person_id: uuid.UUID,
    merged_person_ids: Sequence[uuid.UUID],
    erased_event_count: int,
) -> None:
    """Stage profile.person_erased."""
    payload = events_pb2.PersonErasedEvent(
        person_id=str(person_id),
        merged_person_ids=[str(m) for m in merged_person_ids],
        erased_event_count=erased_event_count,
    )
    payload.erase_time.FromDatetime(datetime.now(UTC))
    await outbox.add(session, payload, event_type=PERSON_ERASED, person_id=str(person_id))
