"""Identity's lineage as the gateway follows it: an erasure redacts the messages of every id that leads to the
forgotten person here, and of none that an unmerge gave back; a send asked for a forgotten person is never
made."""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa
from nats.js import JetStreamContext

from omni.events.v1 import envelope_pb2
from omni.gateway.v1 import gateway_pb2
from omni.identity.v1 import events_pb2 as identity_events
from omni.identity.v1 import identity_pb2
from omni.profile.v1 import profile_pb2
from omni_kit.bus import make_envelope
from omni_kit.embedded import SmtpSink
from omni_kit.ids import new_id

from .support import (
    EventLog,
    Gateway,
    Neighbours,
    create_cart_template,
    create_person,
    publish,
    send_request,
    send_requested,
    unique,
    until,
)


async def _messages(gateway: Gateway, person_id: str) -> list[dict[str, Any]]:
    async with gateway.database.connect() as connection:
        result = await connection.execute(
            sa.text(
                "SELECT request_id, status, recipient, variables, error FROM messages WHERE person_id = :p "
                "ORDER BY request_id"
            ),
            {"p": person_id},
        )
        return [dict(row._mapping) for row in result]


async def _sent_to(gateway: Gateway, person_id: str, template_id: str, email: str) -> None:
    """One email sent to the person, with variables the erasure would wipe. Transactional: after a merge and
    an unmerge, profile keeps the consents with the survivor, and may not have applied them yet."""
    request = send_request(
        person_id, template_id, purpose=profile_pb2.CONSENT_PURPOSE_TRANSACTIONAL, coupon="KEEP"
    )
    sent = (await gateway.stub.SendMessage(request)).message
    assert sent.status == gateway_pb2.MESSAGE_STATUS_SENT and sent.recipient == email


async def _applied(gateway: Gateway, envelope: envelope_pb2.Envelope) -> None:
    """Wait until the gateway's consumer has taken the event."""
    async with gateway.database.connect() as connection:
        async with asyncio.timeout(10):
            while not await connection.scalar(
                sa.text("SELECT 1 FROM inbox WHERE event_id = CAST(:e AS uuid)"), {"e": envelope.id}
            ):
                await asyncio.sleep(0.05)
                await connection.rollback()


def _envelope(payload: Any, event_type: str, person_id: str) -> envelope_pb2.Envelope:
    return make_envelope(payload, event_type=event_type, producer="identity", person_id=person_id)


async def test_forgetting_the_survivor_after_an_unmerge_keeps_the_restored_persons_messages(
    gateway: Gateway, neighbours: Neighbours, events: EventLog
) -> None:
    template_id = await create_cart_template(gateway)
    restored_email, survivor_email = (f"{unique(p)}@example.com" for p in ("restored-", "survivor-"))
    restored = await create_person(neighbours, restored_email, consent=True)
    survivor = await create_person(neighbours, survivor_email, consent=True)
    await neighbours.identity.MergePersons(
        identity_pb2.MergePersonsRequest(
            request_id=unique("merge-"), survivor_person_id=survivor, merged_person_id=restored, reason="test"
        )
    )
    await neighbours.identity.UnmergePerson(
        identity_pb2.UnmergePersonRequest(request_id=unique("unmerge-"), person_id=restored, reason="test")
    )
    # After the unmerge a send for the restored person goes to its own address.
    await _sent_to(gateway, restored, template_id, restored_email)
    await _sent_to(gateway, survivor, template_id, survivor_email)
    restored_before = await _messages(gateway, restored)

    await neighbours.identity.ForgetPerson(
        identity_pb2.ForgetPersonRequest(
            request_id=unique("forget-"), person_id=survivor, requested_by="test", reason="GDPR art. 17"
        )
    )
    forgotten = await until_published(
        events, lambda e: e.type == "identity.person_forgotten" and e.person_id == survivor
    )
    await _applied(gateway, forgotten)

    assert [m["recipient"] for m in await _messages(gateway, survivor)] == [""]
    assert await _messages(gateway, restored) == restored_before


async def test_a_merged_id_the_erasure_does_not_name_is_forgotten_with_its_survivor(
    gateway: Gateway, neighbours: Neighbours, js: JetStreamContext
) -> None:
    template_id = await create_cart_template(gateway)
    merged_email = f"{unique('merged-')}@example.com"
    merged = await create_person(neighbours, merged_email, consent=True)
    await _sent_to(gateway, merged, template_id, merged_email)
    survivor = str(new_id())
    merge = _envelope(
        identity_events.PersonsMergedEvent(survivor_person_id=survivor, merged_person_ids=[merged]),
        "identity.persons_merged",
        survivor,
    )
    await publish(js, neighbours.namespace, merge)
    forget = _envelope(
        identity_events.PersonForgottenEvent(
            person_id=survivor, forgotten_person_ids=[survivor], erasure_id=str(new_id())
        ),
        "identity.person_forgotten",
        survivor,
    )
    await publish(js, neighbours.namespace, forget)
    await _applied(gateway, forget)

    [message] = await _messages(gateway, merged)
    assert (message["recipient"], message["variables"], message["status"]) == ("", {}, "sent")


async def test_a_send_asked_for_a_forgotten_person_is_never_made(
    gateway: Gateway, neighbours: Neighbours, js: JetStreamContext, smtp_sink: SmtpSink, events: EventLog
) -> None:
    template_id = await create_cart_template(gateway)
    email = f"{unique('late-')}@example.com"
    person = await create_person(neighbours, email, consent=True)
    forget = _envelope(
        identity_events.PersonForgottenEvent(
            person_id=person, forgotten_person_ids=[person], erasure_id=str(new_id())
        ),
        "identity.person_forgotten",
        person,
    )
    await publish(js, neighbours.namespace, forget)
    await _applied(gateway, forget)

    # A journey's request staged by decisioning before it applied the erasure, delivered after it.
    late = send_requested(person, template_id, unique("journey:"))
    await publish(js, neighbours.namespace, late)
    await _applied(gateway, late)

    [message] = await _messages(gateway, person)
    assert (message["status"], message["error"], message["recipient"]) == ("failed", "person forgotten", "")
    await asyncio.sleep(0.3)
    assert [m for m in smtp_sink.messages() if m["To"] == email] == []
    assert [e for e in events.envelopes if e.producer == "gateway" and e.person_id == person] == []


async def until_published(events: EventLog, predicate: Any) -> envelope_pb2.Envelope:
    """The first envelope published that matches predicate (waiting for it)."""
    await until(lambda: any(predicate(e) for e in events.envelopes))
    return next(e for e in events.envelopes if predicate(e))
