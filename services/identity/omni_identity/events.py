"""The events identity publishes, and how domain changes become their payloads in the outbox.

identity.person_created (PersonCreatedEvent): a person was seen for the first time.
identity.persons_merged (PersonsMergedEvent): persons were found to be one; the merged ids lead to the survivor.
identity.persons_unmerged (PersonsUnmergedEvent): an operator split a merged person back out of its survivor.
identity.person_forgotten (PersonForgottenEvent): a person was erased; every service deletes what it holds.
Identity consumes no events yet.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime

from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncSession

from omni.common.v1 import common_pb2
from omni.events.v1 import envelope_pb2
from omni.identity.v1 import events_pb2
from omni_identity.changes import GraphEvent, PersonCreated, PersonForgotten, PersonsMerged, PersonsUnmerged
from omni_identity.normalise import IdentifierKey
from omni_kit.bus import Outbox, OutboxRows, mark_outbox_staged

PERSON_CREATED = "identity.person_created"
PERSONS_MERGED = "identity.persons_merged"
PERSONS_UNMERGED = "identity.persons_unmerged"
PERSON_FORGOTTEN = "identity.person_forgotten"


def identifier_messages(keys: Iterable[IdentifierKey]) -> list[common_pb2.Identifier]:
    """Normalised identifiers as protobuf messages."""
    return [common_pb2.Identifier(type=key.type, value=key.value) for key in keys]


def event_payload(event: GraphEvent) -> tuple[str, str, Message]:
    """The event type, the person it concerns and the payload message of a domain event."""
    if isinstance(event, PersonCreated):
        return (
            PERSON_CREATED,
            str(event.person_id),
            events_pb2.PersonCreatedEvent(
                person_id=str(event.person_id),
                identifiers=identifier_messages(event.identifiers),
                source=event.source,
            ),
        )
    if isinstance(event, PersonsMerged):
        return (
            PERSONS_MERGED,
            str(event.survivor_id),
            events_pb2.PersonsMergedEvent(
                survivor_person_id=str(event.survivor_id),
                merged_person_ids=[str(pid) for pid in event.merged_ids],
                cause_identifiers=identifier_messages(event.cause_identifiers),
                source=event.source,
                reason=event.reason,
                reference=event.reference,
            ),
        )
    if isinstance(event, PersonsUnmerged):
        return (
            PERSONS_UNMERGED,
            str(event.restored_id),
            events_pb2.PersonsUnmergedEvent(
                survivor_person_id=str(event.survivor_id),
                restored_person_id=str(event.restored_id),
                restored_merged_person_ids=[str(pid) for pid in event.restored_merged_ids],
                moved_identifiers=identifier_messages(event.moved_identifiers),
                merge_id=str(event.merge_id),
                reason=event.reason,
            ),
        )
    if isinstance(event, PersonForgotten):
        payload = events_pb2.PersonForgottenEvent(
            person_id=str(event.person_id),
            forgotten_person_ids=[str(pid) for pid in event.forgotten_ids],
            erasure_id=str(event.erasure_id),
        )
        payload.forget_time.FromDatetime(event.forgotten_at)
        return PERSON_FORGOTTEN, str(event.person_id), payload
    raise TypeError(f"not an identity event: {event!r}")


class OutboxPublisher:
    """Stages domain events in the outbox of the transaction they happened in."""

    def __init__(self, outbox: Outbox, session: AsyncSession) -> None:
        self._outbox = outbox
        self._session = session

    def rows(
        self, events: Sequence[GraphEvent], *, occurred_at: datetime, new_id: Callable[[], uuid.UUID]
    ) -> OutboxRows:
        """The events as outbox rows, for the caller to insert in the statement that writes their change.

        The envelopes are those omni_kit's Outbox makes (producer, time, trace context), built once and
        copied: a batch stages hundreds of events, and a fresh envelope each cost more than the change. The
        session is marked, so the relay is woken when the transaction commits.
        """
        if not events:
            return OutboxRows()
        mark_outbox_staged(self._session)
        template: envelope_pb2.Envelope | None = None
        envelopes = []
        for event in events:
            event_type, person_id, payload = event_payload(event)
            if template is None:
                template = self._outbox.envelope(
                    payload, event_type=event_type, person_id=person_id, occurred_at=occurred_at
                )
            envelope = envelope_pb2.Envelope()
            envelope.CopyFrom(template)
            envelope.id = str(new_id())
            envelope.type = event_type
            envelope.person_id = person_id
            envelope.payload.Pack(payload)
            envelopes.append(envelope)
        return self._outbox.rows(envelopes)

    async def publish(self, events: Sequence[GraphEvent]) -> None:
        """Stage the events, in order, in one insert."""
        envelopes = []
        for event in events:
            event_type, person_id, payload = event_payload(event)
            envelopes.append(self._outbox.envelope(payload, event_type=event_type, person_id=person_id))
        await self._outbox.add_envelopes(self._session, envelopes)
