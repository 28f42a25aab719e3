"""Sending a message: accept it once per request id, then attempt delivery and record the outcome.

The flow of one send:
1. In one transaction: replay or refuse a known request id, or check the template and insert the message
   QUEUED, already holding the lease of its first attempt; commit. From here the message cannot be lost.
2. Outside any transaction: the person (after merges, the survivor) and its email from identity; unless
   profile's verdict for the person, the message's channel and purpose allows it (the gateway's copy,
   omni_kit.contact) it fails there; traits and cart from profile; render the template, build the email and
   hand it to the SMTP server. A message sent by a journey waits (transient) until the copy is at least as
   new as the verdicts decisioning chose its channel by.
3. In one transaction: record SENT or FAILED and stage message_sent / message_failed with it.

A transient failure (SMTP server, identity or profile unreachable; a 4xx answer; verdicts not yet as new as
the sender's) keeps the message QUEUED with the error and a next attempt time, backing off exponentially,
and schedules that attempt as a job of omni_kit's scheduler in the same transaction (retry.py runs it); a
repeated SendMessage with the same request id attempts it at once. After `max_attempts` the message is
FAILED and its job ends. Each attempt holds a lease on the message (its job waits for the lease's end
meanwhile), so two callers never send it at the same time; only a process that dies after the SMTP server
took the email but before recording it can cause a second copy, which carries the same Message-ID. A process
that stops gracefully lets its running attempts end and gives back the leases it still holds
(`release_leases`), so those messages are attempted again at once rather than when the lease runs out.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta

from opentelemetry import propagate, trace
from sqlalchemy.ext.asyncio import AsyncSession

from omni_gateway.contacts import Contacts
from omni_gateway.domain import (
    DELIVERABLE_CHANNELS,
    DeliveryError,
    MessageStatus,
    PermanentFailure,
    SendRequest,
    TransientFailure,
)
from omni_gateway.email_message import build_email
from omni_gateway.events import stage_outcome
from omni_gateway.models import Message
from omni_gateway.providers.base import EmailContent
from omni_gateway.rendering import Rendered, Renderer, template_context
from omni_gateway.repository import Repository
from omni_gateway.retry import DELIVERY_ATTEMPT, RetryPolicy
from omni_gateway.smtp import Mailer
from omni_gateway.templates import Templates
from omni_gateway.variants import locale_of
from omni_gateway.wire import channel_to_proto, send_fingerprint
from omni_kit import contact
from omni_kit.bus import Outbox
from omni_kit.errors import FieldViolation, InvalidArgument, without_control_characters
from omni_kit.idempotency import ensure_same_request
from omni_kit.ids import new_id
from omni_kit.scheduler import cancel, schedule

tracer = trace.get_tracer("omni_gateway.delivery")
log = logging.getLogger(__name__)

Transaction = Callable[[], AbstractAsyncContextManager[AsyncSession]]


def ensure_same_send(message: Message, digest: bytes) -> None:
    """Refuse a send that reuses the request id of a message with other content (omni_kit.idempotency's
    refusal: ALREADY_EXISTS, IDEMPOTENCY_KEY_REUSED, with the message's id)."""
    ensure_same_request(
        message.request_id,
        message.fingerprint,
        digest,
        used_for=f"a different message ({message.id})",
        message_id=str(message.id),
    )


class Delivery:
    """Accepts sends idempotently and carries out their delivery attempts."""

    def __init__(
        self,
        *,
        transaction: Transaction,
        repository: Repository,
        outbox: Outbox,
        contacts: Contacts,
        renderer: Renderer,
        mailer: Mailer,
        sender: str,
        policy: RetryPolicy,
        templates: Templates,
    ) -> None:
        self._transaction = transaction
        self._repository = repository
        self._outbox = outbox
        self._contacts = contacts
        self._renderer = renderer
        self._templates = templates
        self._mailer = mailer
        self._sender = sender
        self._policy = policy
        # The leases this process holds (message id → its lease's end), and the attempts running to the end.
        self._leases: dict[uuid.UUID, datetime] = {}
        self._running: set[asyncio.Task[Message]] = set()

    async def send(self, request: SendRequest) -> Message:
        """Send a message once per request id and return it: SENT, FAILED, or QUEUED after a transient failure.

        Raises InvalidArgument (channel not delivered, template for another channel), NotFound (template)
        or AlreadyExists (request id reused with other content); nothing is written then.
        """
        if request.channel not in DELIVERABLE_CHANNELS:
            raise InvalidArgument(
                message=f"channel {request.channel.value} cannot be delivered yet",
                violations=[FieldViolation("channel", "only CHANNEL_EMAIL is delivered so far")],
            )
        key = send_fingerprint(request)
        lease = self._policy.lease
        async with self._transaction() as session:
            message = await self._repository.get_message_by_request(session, request.request_id)
            fresh = False
            if message is None:
                version = await self._templates.sendable_version(
                    session, request.template_id, request.channel
                )
                message = await self._repository.insert_message(
                    session, self._row(request, key, template_version=version), lease=lease
                )
                fresh = message is not None
                if message is not None:
                    # Should this first attempt die with its process, the job takes it up when its lease ends.
                    await schedule(session, DELIVERY_ATTEMPT, str(message.id), lease, replace=True)
                    self._hold(message)
                else:  # a concurrent send with the same key committed first
                    message = await self._repository.get_message_by_request(session, request.request_id)
                    assert message is not None
            if not fresh:
                ensure_same_send(message, key)
        if fresh:
            return await self._attempt_to_the_end(message)
        if message.status != MessageStatus.QUEUED:
            return message
        async with self._transaction() as session:
            claimed = await self._claim(session, message.id)
            if claimed is None:  # another attempt is under way, or it just finished
                current = await self._repository.get_message(session, message.id)
                assert current is not None
                return current
        return await self._attempt_to_the_end(claimed)

    async def _claim(self, session: AsyncSession, message_id: uuid.UUID) -> Message | None:
        """Take the lease for one more attempt (None if the message is final or leased by another); its job
        waits for the end of the lease, so an attempt that never reports back is made again then."""
        claimed = await self._repository.claim(session, message_id, lease=self._policy.lease)
        if claimed is not None:
            await schedule(session, DELIVERY_ATTEMPT, str(message_id), self._policy.lease, replace=True)
            self._hold(claimed)
        return claimed

    async def _attempt_to_the_end(self, message: Message) -> Message:
        # A caller that gives up (deadline, cancel) must not cut an attempt between the SMTP server taking
        # the email and the outcome being recorded: that would send it twice.
        task = asyncio.ensure_future(self.attempt(message))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return await asyncio.shield(task)

    def _hold(self, message: Message) -> None:
        if message.claimed_until is not None:
            self._leases[message.id] = message.claimed_until

    async def release_leases(self, wait_s: float = 10.0) -> int:
        """At a graceful stop: let the attempts running to the end finish (at most wait_s), then give back
        the leases this process still holds (attempts cut short with the job worker), each message's job due
        at once, so the messages are attempted again now, here after a restart or by another replica, rather
        than when their lease runs out. Return how many were given back."""
        if self._running:
            _, pending = await asyncio.wait(set(self._running), timeout=wait_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        leases, self._leases = self._leases, {}
        if not leases:
            return 0
        async with self._transaction() as session:
            released = await self._repository.release_leases(session, leases)
            for message_id in released:
                await schedule(session, DELIVERY_ATTEMPT, str(message_id), timedelta(0), replace=True)
        log.info("gave back the leases of %d messages whose attempts did not finish", len(released))
        return len(released)

    async def reject(self, request: SendRequest, error: str) -> Message | None:
        """Record a request that can never be sent as a FAILED message and announce it; None if the key exists."""
        async with self._transaction() as session:
            message = await self._repository.insert_message(
                session,
                self._row(request, send_fingerprint(request)),
                status=MessageStatus.FAILED,
                error=error,
            )
            if message is not None:
                await stage_outcome(self._outbox, session, message)
        return message

    async def claim(self, message_id: uuid.UUID) -> Message | None:
        """Take the lease of a queued message for its scheduled attempt; None if it is final or another
        attempt holds it."""
        async with self._transaction() as session:
            return await self._claim(session, message_id)

    async def attempt(self, message: Message) -> Message:
        """One delivery attempt of a message whose lease the caller holds; records and returns the outcome."""
        with tracer.start_as_current_span(
            "gateway deliver",
            attributes={
                "omni.message_id": str(message.id),
                "omni.person_id": str(message.person_id),
                "omni.attempt": message.attempt_count,
            },
        ) as span:
            recipient = message.recipient
            try:
                if message.attempt_count > self._policy.max_attempts:
                    # An attempt died without reporting back (its lease ran out) and none are left.
                    raise PermanentFailure(
                        f"gave up after {message.attempt_count - 1} attempts: {message.error or 'no answer'}"
                    )
                address = await self._contacts.address_of(message.person_id)
                recipient = address.email
                # Asked at every attempt: consent taken back after a transient failure stops the retry.
                await self._check_verdict(address.person_id, message)
                data = await self._contacts.data_of(message.person_id)
                context = template_context(
                    person_id=str(message.person_id),
                    traits=data.traits,
                    cart=data.cart,
                    variables=message.variables,
                )
                content = await self._templates.content_for(
                    message.template_id,
                    message.template_version,
                    message.channel,
                    locale=locale_of(data.traits),
                    context=context,
                )
                assert isinstance(content, EmailContent)  # email is the one channel delivered
                rendered = Rendered(subject=content.subject, text=content.text, html=content.html)
                email = build_email(
                    message_id=message.id, sender=self._sender, recipient=recipient, rendered=rendered
                )
                await self._mailer.send(email, message_id=message.id)
            except DeliveryError as failure:
                span.set_attribute("omni.delivery.error", str(failure))
                return await self._record(message, recipient, failure)
            return await self._record(message, recipient, None)

    async def _record(self, message: Message, recipient: str, failure: DeliveryError | None) -> Message:
        status, error, retry_after = MessageStatus.SENT, "", None
        if failure is not None and failure.transient and message.attempt_count < self._policy.max_attempts:
            status, error = MessageStatus.QUEUED, str(failure)
            retry_after = self._policy.delay(message.attempt_count)
        elif failure is not None and failure.transient:
            status, error = MessageStatus.FAILED, f"gave up after {message.attempt_count} attempts: {failure}"
        elif failure is not None:
            status, error = MessageStatus.FAILED, str(failure)
        # The error quotes other systems (an SMTP server's reply): a NUL in it could never be stored.
        error = without_control_characters(error)
        async with self._transaction() as session:
            updated = await self._repository.record_outcome(
                session, message.id, status=status, recipient=recipient, error=error, retry_after=retry_after
            )
            self._leases.pop(message.id, None)
            if updated is None:
                # Finished meanwhile (its person forgotten): keep what is stored, announce nothing.
                current = await self._repository.get_message(session, message.id)
                assert current is not None
                return current
            if retry_after is not None:
                await schedule(session, DELIVERY_ATTEMPT, str(message.id), retry_after, replace=True)
            else:
                await cancel(session, DELIVERY_ATTEMPT, str(message.id))
            await stage_outcome(self._outbox, session, updated)
        return updated

    async def _check_verdict(self, person_id: uuid.UUID, message: Message) -> None:
        """Raise PermanentFailure unless profile's verdict lets the message out; TransientFailure while the
        gateway's copy of the verdicts is older than those the sender decided by."""
        async with self._transaction() as session:
            verdicts = (await contact.verdicts_of(session, [person_id]))[person_id]
        if verdicts.version < message.contact_verdict_version:
            raise TransientFailure(
                f"waiting for profile's contact verdicts (version {message.contact_verdict_version} decided "
                f"the send; version {verdicts.version} is known here)"
            )
        refusal = verdicts.of(channel_to_proto(message.channel), message.purpose).refusal
        if refusal is not None:
            raise PermanentFailure(refusal)

    def _row(self, request: SendRequest, key: bytes, *, template_version: int = 0) -> dict[str, object]:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        return {
            "id": new_id(),
            "request_id": request.request_id,
            "fingerprint": key,
            "person_id": request.person_id,
            "channel": request.channel,
            "template_id": request.template_id,
            "template_version": template_version,
            "variables": request.variables,
            "journey_id": request.journey_id,
            "purpose": request.purpose,
            "contact_verdict_version": request.contact_verdict_version,
            "trace_context": carrier,
        }
