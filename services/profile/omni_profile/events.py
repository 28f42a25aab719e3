"""The events profile publishes and consumes: their types, and how the published ones are staged.

Published (payloads in omni.profile.v1.events): profile.event_tracked for every newly recorded event,
profile.profile_changed when traits, computed traits or the cart change (or a merge lands; only the parts
named in `changed` are filled), profile.consent_changed, profile.person_erased. The handlers of consumed
events are in consumers.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from google.protobuf import any_pb2
from sqlalchemy.ext.asyncio import AsyncSession

from omni.events.v1 import envelope_pb2
from omni.profile.v1 import events_pb2
from omni_kit.bus import Outbox
from omni_kit.ids import new_id_str
from omni_profile import wire
from omni_profile.domain import CartLine, Consent, Event

EVENT_TRACKED = "profile.event_tracked"
PROFILE_CHANGED = "profile.profile_changed"
CONSENT_CHANGED = "profile.consent_changed"
PERSON_ERASED = "profile.person_erased"

PERSONS_MERGED = "identity.persons_merged"
PERSONS_UNMERGED = "identity.persons_unmerged"
PERSON_FORGOTTEN = "identity.person_forgotten"
PERSON_ENTERED_SEGMENT = "segmentation.person_entered_segment"
PERSON_EXITED_SEGMENT = "segmentation.person_exited_segment"
MESSAGE_SENT_EVENT = "gateway.message_sent"
MESSAGE_FAILED_EVENT = "gateway.message_failed"

GATEWAY_EVENT_PREFIX = "gateway:"
"""Timeline events recorded from gateway outcomes have the id "gateway:<message id>" (source "gateway")."""

_TRACKED_TYPE_URL = "type.googleapis.com/" + events_pb2.EventTrackedEvent.DESCRIPTOR.full_name


async def stage_events_tracked(session: AsyncSession, outbox: Outbox, tracked: Sequence[Event]) -> None:
    """Stage profile.event_tracked for each newly recorded event (one insert)."""
    if not tracked:
        return
    # The trace context and producer are the same for the whole batch: build them once, then one envelope
    # per event around its serialised payload.
    template = outbox.envelope(events_pb2.EventTrackedEvent(), event_type=EVENT_TRACKED)
    trace_context = dict(template.trace_context)
    envelopes = []
    for event in tracked:
        envelope = envelope_pb2.Envelope(
            id=new_id_str(),
            type=EVENT_TRACKED,
            person_id=str(event.person_id),
            producer=template.producer,
            trace_context=trace_context,
            payload=any_pb2.Any(
                type_url=_TRACKED_TYPE_URL,
                value=events_pb2.EventTrackedEvent(event=wire.event_to_proto(event)).SerializeToString(),
            ),
        )
        envelope.occurred_at.FromDatetime(event.occurred_at.astimezone(UTC))
        envelopes.append(envelope)
    await outbox.add_envelopes(session, envelopes)


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
) -> None:
    """Stage profile.profile_changed with the parts after the change (each part given is filled)."""
    payload = events_pb2.ProfileChangedEvent(
        person_id=str(person_id),
        changed=list(changed),
        merged_person_ids=[str(m) for m in merged_person_ids],
    )
    if traits is not None:
        payload.traits.CopyFrom(wire.dict_to_struct(traits))
    if cart is not None:
        payload.cart.CopyFrom(wire.cart_to_proto(cart))
    if computed_traits is not None:
        payload.computed_traits.CopyFrom(wire.dict_to_struct(computed_traits))
    await outbox.add(session, payload, event_type=PROFILE_CHANGED, person_id=str(person_id))


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
