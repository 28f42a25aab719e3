"""Consent enforced at send time, over real identity and profile: marketing needs the person's consent for
the channel, transactional is sent unless refused, and every attempt (retries too) reads it afresh."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from nats.js import JetStreamContext

from omni.gateway.v1 import gateway_pb2
from omni.profile.v1 import profile_pb2
from omni_kit.embedded import SmtpSink
from omni_kit.errors import status_details

from .support import (
    EventLog,
    Gateway,
    Neighbours,
    StartGateway,
    add_to_cart,
    as_announced,
    counts,
    create_cart_template,
    create_person,
    publish,
    send_request,
    send_requested,
    set_consent,
    unique,
)

MARKETING = profile_pb2.CONSENT_PURPOSE_MARKETING
TRANSACTIONAL = profile_pb2.CONSENT_PURPOSE_TRANSACTIONAL
GRANTED = profile_pb2.CONSENT_STATE_GRANTED
DENIED = profile_pb2.CONSENT_STATE_DENIED
REVOKED = profile_pb2.CONSENT_STATE_REVOKED
FAILED = gateway_pb2.MESSAGE_STATUS_FAILED
SENT = gateway_pb2.MESSAGE_STATUS_SENT


async def _emails_to(sink: SmtpSink, address: str) -> int:
    """How many emails the sink holds for the address, after a moment for any late one to land."""
    await asyncio.sleep(0.3)
    return sum(1 for m in await asyncio.to_thread(sink.messages) if m["To"] == address)


async def _refused_for_consent(
    gateway: Gateway, events: EventLog, request: gateway_pb2.SendMessageRequest, error: str
) -> gateway_pb2.Message:
    """Send, expect FAILED with the consent error, and the same failure published as message_failed."""
    message = (await gateway.stub.SendMessage(request)).message
    assert message.status == FAILED
    assert message.error == error
    published = await events.wait_for_message("gateway.message_failed", lambda m: m.id == message.id)
    assert published == as_announced(message)
    return message


@pytest.mark.parametrize("with_profile", [False, True], ids=["no-profile", "profile-without-consent"])
async def test_without_consent_a_marketing_message_fails_is_announced_and_is_not_handed_to_smtp(
    gateway: Gateway, neighbours: Neighbours, smtp_sink: SmtpSink, events: EventLog, with_profile: bool
) -> None:
    email = f"{unique('noconsent-')}@example.com"
    person_id = await create_person(neighbours, email)
    if with_profile:
        await add_to_cart(
            neighbours, person_id, product_id="sku-1", name="Socks", quantity=1, price_minor=500
        )
    template_id = await create_cart_template(gateway)

    message = await _refused_for_consent(
        gateway, events, send_request(person_id, template_id), "no marketing consent for email"
    )

    assert message.purpose == MARKETING
    assert message.attempt_count == 1
    assert await _emails_to(smtp_sink, email) == 0
    stored = await gateway.stub.GetMessage(gateway_pb2.GetMessageRequest(message_id=message.id))
    assert stored.message == message


async def test_marketing_goes_out_while_consent_is_granted_and_stops_once_it_is_revoked(
    gateway: Gateway, neighbours: Neighbours, smtp_sink: SmtpSink, events: EventLog
) -> None:
    email = f"{unique('granted-')}@example.com"
    person_id = await create_person(neighbours, email)
    await set_consent(neighbours, person_id, GRANTED)
    template_id = await create_cart_template(gateway)

    sent = (await gateway.stub.SendMessage(send_request(person_id, template_id, purpose=MARKETING))).message
    assert sent.status == SENT, sent.error
    assert sent.purpose == MARKETING
    await smtp_sink.wait_for(lambda m: m["To"] == email)

    await set_consent(neighbours, person_id, REVOKED)
    await _refused_for_consent(
        gateway, events, send_request(person_id, template_id), "no marketing consent for email: revoked"
    )
    assert await _emails_to(smtp_sink, email) == 1


async def test_consent_revoked_after_a_transient_failure_stops_the_retry_from_sending(
    start_gateway: StartGateway,
    neighbours: Neighbours,
    down_port: int,
    late_sink: SmtpSink,
    events: EventLog,
) -> None:
    gateway = await start_gateway(smtp_port=down_port, retry_first_delay_s=600)
    email = f"{unique('revoked-')}@example.com"
    person_id = await create_person(neighbours, email, consent=True)
    request = send_request(person_id, await create_cart_template(gateway))
    queued = (await gateway.stub.SendMessage(request)).message
    assert queued.status == gateway_pb2.MESSAGE_STATUS_QUEUED
    assert queued.error.startswith("smtp: cannot reach the server")

    await set_consent(neighbours, person_id, REVOKED)
    late_sink.start()
    message = await _refused_for_consent(gateway, events, request, "no marketing consent for email: revoked")

    assert message.id == queued.id
    assert message.attempt_count == 2
    assert await _emails_to(late_sink, email) == 0


async def test_the_retry_loop_reads_consent_again_and_fails_a_message_whose_consent_was_revoked(
    start_gateway: StartGateway, neighbours: Neighbours, down_port: int, events: EventLog
) -> None:
    # The SMTP server stays down: only the consent check can end the message before its attempts run out.
    gateway = await start_gateway(
        smtp_port=down_port, retry_first_delay_s=0.2, retry_max_delay_s=0.2, send_max_attempts=100
    )
    person_id = await create_person(neighbours, f"{unique('loop-')}@example.com", consent=True)
    request = send_request(person_id, await create_cart_template(gateway))
    queued = (await gateway.stub.SendMessage(request)).message
    assert queued.status == gateway_pb2.MESSAGE_STATUS_QUEUED

    await set_consent(neighbours, person_id, REVOKED)

    failed = await events.wait_for_message("gateway.message_failed", lambda m: m.id == queued.id)
    assert failed.error == "no marketing consent for email: revoked"
    assert failed.attempt_count >= 2


async def test_email_double_opt_in_sends_nothing_until_it_is_confirmed(
    gateway: Gateway, neighbours: Neighbours, smtp_sink: SmtpSink, events: EventLog
) -> None:
    email = f"{unique('doi-')}@example.com"
    person_id = await create_person(neighbours, email)
    pending = await set_consent(
        neighbours,
        person_id,
        GRANTED,
        double_opt_in=profile_pb2.DOUBLE_OPT_IN_STATE_PENDING_CONFIRMATION,
    )
    assert not pending.contact_allowed
    template_id = await create_cart_template(gateway)

    await _refused_for_consent(
        gateway,
        events,
        send_request(person_id, template_id),
        "no marketing consent for email: awaiting double opt-in confirmation",
    )
    assert await _emails_to(smtp_sink, email) == 0

    await set_consent(neighbours, person_id, GRANTED, double_opt_in=profile_pb2.DOUBLE_OPT_IN_STATE_CONFIRMED)
    sent = (await gateway.stub.SendMessage(send_request(person_id, template_id))).message

    assert sent.status == SENT, sent.error
    await smtp_sink.wait_for(lambda m: m["To"] == email)


async def test_a_transactional_message_goes_out_without_consent_even_when_marketing_is_denied(
    gateway: Gateway, neighbours: Neighbours, smtp_sink: SmtpSink
) -> None:
    email = f"{unique('receipt-')}@example.com"
    person_id = await create_person(neighbours, email)
    await set_consent(neighbours, person_id, DENIED)
    template_id = await create_cart_template(gateway)

    sent = (
        await gateway.stub.SendMessage(send_request(person_id, template_id, purpose=TRANSACTIONAL))
    ).message

    assert sent.status == SENT, sent.error
    assert sent.purpose == TRANSACTIONAL
    await smtp_sink.wait_for(lambda m: m["To"] == email)


@pytest.mark.parametrize("state", [DENIED, REVOKED], ids=["denied", "revoked"])
async def test_a_transactional_message_is_not_sent_when_transactional_consent_is_refused(
    gateway: Gateway,
    neighbours: Neighbours,
    smtp_sink: SmtpSink,
    events: EventLog,
    state: profile_pb2.ConsentState.ValueType,
) -> None:
    email = f"{unique('optout-')}@example.com"
    person_id = await create_person(neighbours, email, consent=True)  # marketing consent changes nothing
    await set_consent(neighbours, person_id, state, purpose=TRANSACTIONAL)
    template_id = await create_cart_template(gateway)
    word = profile_pb2.ConsentState.Name(state).removeprefix("CONSENT_STATE_").lower()

    message = await _refused_for_consent(
        gateway,
        events,
        send_request(person_id, template_id, purpose=TRANSACTIONAL),
        f"no transactional consent for email: {word}",
    )

    assert message.purpose == TRANSACTIONAL
    assert await _emails_to(smtp_sink, email) == 0


async def test_a_journeys_send_request_for_a_person_without_consent_fails_and_is_announced(
    gateway: Gateway,
    neighbours: Neighbours,
    smtp_sink: SmtpSink,
    events: EventLog,
    js: JetStreamContext,
) -> None:
    email = f"{unique('journey-noconsent-')}@example.com"
    person_id = await create_person(neighbours, email)
    template_id = await create_cart_template(gateway)
    request_id = unique("journey-step-")

    await publish(js, neighbours.namespace, send_requested(person_id, template_id, request_id))

    failed = await events.wait_for_message("gateway.message_failed", lambda m: m.request_id == request_id)
    assert failed.status == FAILED
    assert failed.error == "no marketing consent for email"
    assert failed.purpose == MARKETING
    assert failed.journey_id == "journey-abandoned-cart"
    assert await _emails_to(smtp_sink, email) == 0


async def test_the_same_request_id_with_another_purpose_is_refused_and_changes_nothing(
    gateway: Gateway, neighbours: Neighbours
) -> None:
    person_id = await create_person(neighbours, f"{unique('purpose-')}@example.com", consent=True)
    template_id = await create_cart_template(gateway)
    first = (await gateway.stub.SendMessage(send_request(person_id, template_id))).message
    assert first.status == SENT, first.error
    before = await counts(gateway.database)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await gateway.stub.SendMessage(
            send_request(person_id, template_id, request_id=first.request_id, purpose=TRANSACTIONAL)
        )

    details = status_details(raised.value)
    assert details.code == grpc.StatusCode.ALREADY_EXISTS
    assert details.error_info is not None
    assert details.error_info.reason == "IDEMPOTENCY_KEY_REUSED"
    assert await counts(gateway.database) == before
    # Marketing said outright is the same request as marketing left unsaid: answered, not refused.
    again = await gateway.stub.SendMessage(
        send_request(person_id, template_id, request_id=first.request_id, purpose=MARKETING)
    )
    assert again.message == first
