"""What multi-step journeys consume from profile, on a durable consumer of their own (profile's event stream is
the busiest; segment entries and the contact verdicts stay on the read-models consumer): tracked events
(entries, exits, waits for an event, events looked back at) and traits (conditions, waits until a trait's
date, the person's time zone)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from google.protobuf.json_format import MessageToDict
from sqlalchemy.ext.asyncio import AsyncSession

from omni.events.v1 import envelope_pb2
from omni.profile.v1 import events_pb2 as profile_events
from omni_decisioning.orchestration.engine import Engine
from omni_decisioning.orchestration.store import Store
from omni_decisioning.read_models import ReadModels
from omni_kit.bus import unpack
from omni_kit.ids import parse_uuid

log = logging.getLogger(__name__)

EVENT_TRACKED = "profile.event_tracked"
PROFILE_CHANGED = "profile.profile_changed"
CONSUMED = (EVENT_TRACKED, PROFILE_CHANGED)


class ProfileEventHandlers:
    """Applies profile's events to the journeys; each call runs in the consumer's transaction, once per id."""

    def __init__(self, engine: Engine, store: Store, read_models: ReadModels) -> None:
        self._engine = engine
        self._store = store
        self._read_models = read_models

    async def handle(self, session: AsyncSession, envelope: envelope_pb2.Envelope) -> None:
        """Dispatch one envelope by its type; others are ignored."""
        if envelope.type == EVENT_TRACKED:
            await self._event_tracked(session, envelope)
        elif envelope.type == PROFILE_CHANGED:
            await self._profile_changed(session, envelope)

    async def _event_tracked(self, session: AsyncSession, envelope: envelope_pb2.Envelope) -> None:
        event = unpack(envelope, profile_events.EventTrackedEvent).event
        person_id = parse_uuid(event.person_id)
        if person_id is None or not event.type:
            log.warning("skipping event_tracked %s: no valid person id or type", envelope.id)
            return
        person = await self._read_models.person(session, person_id)
        if person is None:
            return
        at = event.occurred_at.ToDatetime(tzinfo=UTC) if event.HasField("occurred_at") else datetime.now(UTC)
        await self._engine.on_event(
            session,
            person_id=person,
            event_id=event.id or envelope.id,
            event_type=event.type,
            at=at,
            properties=MessageToDict(event.properties) if event.HasField("properties") else {},
        )

    async def _profile_changed(self, session: AsyncSession, envelope: envelope_pb2.Envelope) -> None:
        event = unpack(envelope, profile_events.ProfileChangedEvent)
        if event.changed and "traits" not in event.changed:
            return
        person_id = parse_uuid(event.person_id)
        if person_id is None:
            return
        person = await self._read_models.person(session, person_id)
        if person is None:
            return
        as_of = (
            envelope.occurred_at.ToDatetime(tzinfo=UTC)
            if envelope.HasField("occurred_at")
            else datetime.now(UTC)
        )
        await self._store.set_traits(session, person, MessageToDict(event.traits), as_of)
