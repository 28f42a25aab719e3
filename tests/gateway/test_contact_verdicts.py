"""The gateway lets a message out by profile's verdict as it holds it (omni_kit.contact), not by judging
consents: a journey's send waits for the verdicts decisioning chose its channel by, and a newer refusal the
gateway holds still stops it."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from nats.js import JetStreamContext

from omni.common.v1 import common_pb2
from omni.profile.v1 import profile_pb2
from omni_kit import contact
from omni_kit.bus import make_envelope
from omni_kit.embedded import SmtpSink

from .support import (
    EventLog,
    Gateway,
    Neighbours,
    StartGateway,
    create_cart_template,
    create_person,
    publish,
    send_requested,
    set_consent,
    unique,
    verdicts_reached,
)


async def _attempted(gateway: Gateway, request_id: str, within: float = 10.0) -> tuple[str, str]:
    """The message's status and error once its first attempt is recorded."""
    async with asyncio.timeout(within):
        while True:
            async with gateway.database.connect() as connection:
                row = (
                    await connection.execute(
                        sa.text("SELECT status, error FROM messages WHERE request_id = :r AND error <> ''"),
                        {"r": request_id},
                    )
                ).one_or_none()
            if row is not None:
                return row.status, row.error
            await asyncio.sleep(0.05)


async def test_a_journeys_send_waits_for_the_verdicts_its_channel_was_chosen_by(
    start_gateway: StartGateway,
    neighbours: Neighbours,
    smtp_sink: SmtpSink,
    events: EventLog,
    js: JetStreamContext,
) -> None:
    gateway = await start_gateway(smtp_port=smtp_sink.port, retry_first_delay_s=0.2, retry_max_delay_s=0.2)
    email = f"{unique('ahead-')}@example.com"
    person_id = await create_person(neighbours, email)
    request_id = unique("journey-step-")
    # Decisioning saw a verdict allowing email marketing that has not reached the gateway yet.
    version = max(neighbours.verdicts.versions().values(), default=0) + 1_000_000
    await publish(
        js,
        neighbours.namespace,
        send_requested(
            person_id, await create_cart_template(gateway), request_id, contact_verdict_version=version
        ),
    )

    assert await _attempted(gateway, request_id) == (
        "queued",
        f"waiting for profile's contact verdicts (version {version} decided the send; version 0 is known here)",
    )

    allowed = contact.Verdict(
        common_pb2.CHANNEL_EMAIL, contact.Purpose.MARKETING, True, contact.Reason.CONSENT_GRANTED
    )
    announcement = contact.verdict_changed_event(
        uuid.UUID(person_id), [allowed], version=version, decided_at=datetime.now(UTC)
    )
    await publish(
        js,
        neighbours.namespace,
        make_envelope(
            announcement, event_type=contact.CONTACT_VERDICT_CHANGED, producer="profile", person_id=person_id
        ),
    )

    sent = await events.wait_for_message("gateway.message_sent", lambda m: m.request_id == request_id)
    assert sent.attempt_count >= 2
    await smtp_sink.wait_for(lambda m: m["To"] == email)


async def test_a_refusal_newer_than_the_verdict_a_journey_decided_by_stops_its_send(
    gateway: Gateway, neighbours: Neighbours, smtp_sink: SmtpSink, events: EventLog, js: JetStreamContext
) -> None:
    email = f"{unique('revoked-since-')}@example.com"
    person_id = await create_person(neighbours, email, consent=True)
    decided_by = neighbours.verdicts.versions()[person_id]
    await set_consent(neighbours, person_id, profile_pb2.CONSENT_STATE_REVOKED)
    await verdicts_reached(gateway, neighbours.verdicts.versions())
    request_id = unique("journey-step-")

    await publish(
        js,
        neighbours.namespace,
        send_requested(
            person_id, await create_cart_template(gateway), request_id, contact_verdict_version=decided_by
        ),
    )

    failed = await events.wait_for_message("gateway.message_failed", lambda m: m.request_id == request_id)
    assert failed.error == "no marketing consent for email: revoked"
    assert not [m for m in smtp_sink.messages() if m["To"] == email]
