"""What decisioning publishes: the event types, and the publisher that stages them in the outbox of the caller's
transaction. What it consumes is in consumers.py."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from omni.common.v1 import common_pb2
from omni.decisioning.v1 import events_pb2
from omni.events.v1 import envelope_pb2
from omni_decisioning.entities import DecideQuery, Decision
from omni_kit.bus import Outbox, OutboxRows

SEND_REQUESTED = "decisioning.send_requested"
DECISION_MADE = "decisioning.decision_made"


class Publisher:
    """Stages decisioning's events in the outbox of the caller's transaction."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox

    async def send_requested(
        self,
        session: AsyncSession,
        *,
        request_id: str,
        person_id: uuid.UUID,
        channel: int,
        template_id: str,
        journey_id: uuid.UUID,
        contact_verdict_version: int = 0,
        variables: dict[str, Any] | None = None,
    ) -> None:
        """Ask the gateway to send a template to a person on a channel (decisioning.send_requested), saying
        which version of profile's contact verdicts the channel was chosen by, and the template's variables."""
        envelope = self.send_request(
            request_id=request_id,
            person_id=person_id,
            channel=channel,
            template_id=template_id,
            journey_id=journey_id,
            contact_verdict_version=contact_verdict_version,
            variables=variables,
        )
        await self._outbox.add_envelopes(session, [envelope])

    def send_request(
        self,
        *,
        request_id: str,
        person_id: uuid.UUID,
        channel: int,
        template_id: str,
        journey_id: uuid.UUID,
        contact_verdict_version: int = 0,
        variables: dict[str, Any] | None = None,
    ) -> envelope_pb2.Envelope:
        """The envelope of a decisioning.send_requested (see send_requested), for stage_sends to write with
        others."""
        payload = events_pb2.SendRequestedEvent(
            request_id=request_id,
            person_id=str(person_id),
            channel=common_pb2.Channel.ValueType(channel),
            template_id=template_id,
            journey_id=str(journey_id),
            contact_verdict_version=contact_verdict_version,
        )
        if variables:
            payload.variables.update(variables)
        return self._outbox.envelope(payload, event_type=SEND_REQUESTED, person_id=str(person_id))

    async def stage_sends(self, session: AsyncSession, envelopes: Sequence[envelope_pb2.Envelope]) -> None:
        """Stage send requests built by send_request in the session's transaction, in one statement."""
        await self._outbox.add_envelopes(session, envelopes)

    def decisions_made(self, decisions: Sequence[tuple[Decision, DecideQuery]]) -> OutboxRows:
        """The outbox rows announcing decisions for learning and attribution (decisioning.decision_made), for
        the repository to write with the decisions (consecutive ones share a row)."""
        return self._outbox.rows(
            [
                self._outbox.envelope(
                    events_pb2.DecisionMadeEvent(
                        decision_id=str(decision.id),
                        person_id=str(decision.person_id),
                        touchpoint=query.touchpoint,
                        offer_ids=[str(action.offer.id) for action in decision.actions],
                    ),
                    event_type=DECISION_MADE,
                    person_id=str(decision.person_id),
                )
                for decision, query in decisions
            ]
        )
