"""identity.person_forgotten: the messages of every id of the person are redacted, unsent ones end FAILED
and are never sent afterwards, a replayed request is answered from the redacted row, nothing is published."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from nats.js import JetStreamContext

from omni.events.v1 import envelope_pb2
from omni.gateway.v1 import gateway_pb2
from omni.identity.v1 import events_pb2 as identity_events
from omni_gateway.domain import Channel
from omni_gateway.suppression import address_hash
from omni_kit.bus import make_envelope
from omni_kit.embedded import SmtpSink, free_port
from omni_kit.ids import new_id

from .support import (
    EventLog,
    Gateway,
    Neighbours,
    StartGateway,
    create_cart_template,
    create_person,
    publish,
    send_request,
    unique,
    until,
)


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[SmtpSink]:
    """An SMTP sink of the test's own, which the test stops and starts again."""
    sink = SmtpSink(tmp_path / "erasure-mail", port=free_port("127.0.0.1"))
    sink.start()
    yield sink
    sink.stop()


async def _rows(gateway: Gateway, person_id: str) -> list[dict[str, Any]]:
    async with gateway.database.connect() as connection:
        result = await connection.execute(
            sa.text(
                "SELECT request_id, status, recipient, variables, error, trace_context, next_attempt_at "
                "FROM messages WHERE person_id = :p ORDER BY request_id"
            ),
            {"p": person_id},
        )
        return [dict(row._mapping) for row in result]


def _forget(person_id: str, *forgotten_ids: str) -> envelope_pb2.Envelope:
    return make_envelope(
        identity_events.PersonForgottenEvent(
            person_id=person_id, forgotten_person_ids=list(forgotten_ids), erasure_id=str(new_id())
        ),
        event_type="identity.person_forgotten",
        producer="identity",
        person_id=person_id,
    )


async def test_forgetting_a_person_redacts_its_messages_and_stops_the_unsent_ones(
    start_gateway: StartGateway,
    neighbours: Neighbours,
    sink: SmtpSink,
    events: EventLog,
    js: JetStreamContext,
) -> None:
    gateway = await start_gateway(
        smtp_port=sink.port, retry_first_delay_s=0.2, retry_max_delay_s=0.2, send_max_attempts=100
    )
    forgotten_email = f"{unique('forget-')}@example.com"
    kept_email = f"{unique('keep-')}@example.com"
    forgotten = await create_person(neighbours, forgotten_email, consent=True)
    kept = await create_person(neighbours, kept_email, consent=True)
    template_id = await create_cart_template(gateway)
    sent_request = send_request(forgotten, template_id, coupon="SENT-20")
    sent = (await gateway.stub.SendMessage(sent_request)).message
    assert sent.status == gateway_pb2.MESSAGE_STATUS_SENT and sent.recipient == forgotten_email
    kept_request = send_request(kept, template_id, coupon="KEEP-30")
    assert (await gateway.stub.SendMessage(kept_request)).message.status == gateway_pb2.MESSAGE_STATUS_SENT
    # With the SMTP server down, one more message of the person stays queued, retried by the loop.
    sink.stop()
    queued_request = send_request(forgotten, template_id, coupon="QUEUED-10")
    queued = (await gateway.stub.SendMessage(queued_request)).message
    assert queued.status == gateway_pb2.MESSAGE_STATUS_QUEUED
    kept_before = await _rows(gateway, kept)
    applied_before = gateway.runtime.consumers[0].applied

    await publish(js, neighbours.namespace, _forget(forgotten, forgotten, str(new_id()), "not-a-uuid"))
    await until(lambda: gateway.runtime.consumers[0].applied >= applied_before + 1)

    rows = await _rows(gateway, forgotten)
    by_request = {row["request_id"]: row for row in rows}
    assert by_request[queued_request.request_id]["status"] == "failed"
    assert by_request[queued_request.request_id]["error"] == "person forgotten"
    assert by_request[queued_request.request_id]["next_attempt_at"] is None
    assert by_request[sent_request.request_id]["status"] == "sent"
    assert by_request[sent_request.request_id]["error"] == ""
    for row in rows:
        assert row["recipient"] == "" and row["variables"] == {} and row["trace_context"] == {}
    assert await _rows(gateway, kept) == kept_before
    # The address is suppressed (kept as a hash: the list holds no address), the kept person's is not.
    async with gateway.database.connect() as connection:
        suppressed = {
            bytes(key)
            for (key,) in await connection.execute(
                sa.text("SELECT address_hash FROM suppressions WHERE reason = 'erased'")
            )
        }
    assert address_hash(Channel.EMAIL, forgotten_email) in suppressed
    assert address_hash(Channel.EMAIL, kept_email) not in suppressed

    # With the server back, neither the retry loop nor a replayed request sends anything.
    sink.start()
    replayed = (await gateway.stub.SendMessage(queued_request)).message
    assert replayed.id == queued.id and replayed.status == gateway_pb2.MESSAGE_STATUS_FAILED
    assert replayed.error == "person forgotten" and replayed.recipient == ""
    again = (await gateway.stub.SendMessage(sent_request)).message
    assert again.id == sent.id and again.status == gateway_pb2.MESSAGE_STATUS_SENT and again.recipient == ""
    await asyncio.sleep(0.6)
    assert [m["To"] for m in sink.messages()].count(forgotten_email) == 1
    assert [m for m in events.messages("gateway.message_failed") if m.person_id == forgotten] == []

    # The same erasure again, in a new envelope (identity retrying), changes nothing.
    applied_before = gateway.runtime.consumers[0].applied
    await publish(js, neighbours.namespace, _forget(forgotten, forgotten))
    await until(lambda: gateway.runtime.consumers[0].applied >= applied_before + 1)
    assert await _rows(gateway, forgotten) == rows
    assert await _rows(gateway, kept) == kept_before
