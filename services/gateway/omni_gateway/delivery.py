"""Sending a message: accept it once per request id, then attempt delivery and record the outcome.

The flow of one send:
1. In one transaction: replay or refuse a known request id, or check the template and insert the message
   QUEUED, already holding the lease of its first attempt; commit. From here the message cannot be lost.
2. Outside any transaction: the person (after merges, the survivor) and its identifiers from identity; unless
   profile's verdict for the person, the message's channel and purpose allows it (the gateway's copy,
   omni_kit.contact) it fails there; traits and cart from profile; render the template and hand the message
   to the channel's providers in order (failover.py: failover, suppression, the attempt recorded before each
   provider is called). A message sent by a journey waits (transient) until the copy is at least as new as
   the verdicts decisioning chose its channel by.
3. In one transaction: record SENT (with the provider that took it) or FAILED and stage message_sent /
   message_failed with it; an address a provider refused as invalid is suppressed in the same transaction.

A transient failure (every provider unreachable, refusing for now or behind an open circuit; identity or
profile unreachable; verdicts not yet as new as the sender's) keeps the message QUEUED with the error and a
next attempt time, backing off exponentially with jitter, and schedules that attempt as a job of omni_kit's
scheduler in the same transaction (retry.py runs it); a repeated SendMessage with the same request id
attempts it at once. After `max_attempts` the message is FAILED and its job ends. Each attempt holds a lease
on the message (its job waits for the lease's end meanwhile), so two callers never send it at the same time;
only a process that dies after a provider took the message but before recording it can cause a second copy
(unless the provider can be asked: `lookup`), and an email's copy carries the same Message-ID. A process
that stops gracefully lets its running attempts end and gives back the leases it still holds
(`release_leases`), so those messages are attempted again at once rather than when the lease runs out.

Journeys' sends (`enqueue`) are only queued, in the consumer's transaction, with their first attempt a due
job: the job pool sends them, a bounded number at a time, asking identity and profile once per batch.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from opentelemetry import propagate, trace
from sqlalchemy.ext.asyncio import AsyncSession

from omni_gateway.contacts import Contacts, PersonData
from omni_gateway.domain import (
    Channel,
    DeliveryError,
    MessageStatus,
    PermanentFailure,
    SendRequest,
    TransientFailure,
)
from omni_gateway.events import stage_outcome
from omni_gateway.failover import Failover
from omni_gateway.models import Message
from omni_gateway.providers.base import (
    Accepted,
    PersonContacts,
    RetrySchedule,
)
from omni_gateway.providers.registry import Registry
from omni_gateway.rendering import template_context
from omni_gateway.repository import Repository
from omni_gateway.retry import DELIVERY_ATTEMPT, RetryPolicy
from omni_gateway.suppression import (
    AddressRefused,
    SuppressionReason,
    address_hash,
)
from omni_gateway.templates import Templates
from omni_gateway.variants import locale_of
from omni_gateway.wire import channel_to_proto, send_fingerprint
from omni_kit import audit, contact
from omni_kit.bus import Outbox
from omni_kit.db import database_unavailable, retry_while_unavailable
from omni_kit.errors import FieldViolation, InvalidArgument, without_control_characters
from omni_kit.idempotency import ensure_same_request
from omni_kit.ids import new_id
from omni_kit.scheduler import cancel, schedule

tracer = trace.get_tracer("omni_gateway.delivery")
log = logging.getLogger(__name__)

T = TypeVar("T")

LEASE_MARGIN = timedelta(seconds=15)
"""How long before an attempt's lease runs out it stops waiting for the database to record what it did (at
most a quarter of the lease): one more try must end before another attempt may take the message."""

Transaction = Callable[[], AbstractAsyncContextManager[AsyncSession]]


@dataclass(frozen=True)
class Prefetched:
    """What identity and profile said of a message's person, fetched for a batch of attempts; None: not
    fetched (the attempt asks)."""

    person: PersonContacts | PermanentFailure | None = None
    data: PersonData | None = None


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
        registry: Registry,
        policy: RetryPolicy,
        templates: Templates,
    ) -> None:
        self._transaction = transaction
        self._repository = repository
        self._outbox = outbox
        self._contacts = contacts
        self._registry = registry
        self._templates = templates
        self._failover = Failover(transaction=transaction, repository=repository, registry=registry)
        self._policy = policy
        # The leases this process holds (message id → its lease's end), and the attempts running to the end.
        self._leases: dict[uuid.UUID, datetime] = {}
        self._running: set[asyncio.Task[Message]] = set()

    async def send(self, request: SendRequest) -> Message:
        """Send a message once per request id and return it: SENT, FAILED, or QUEUED after a transient failure.

        Raises InvalidArgument (channel not delivered, template for another channel), NotFound (template)
        or AlreadyExists (request id reused with other content); nothing is written then.
        """
        self._check_channel(request.channel)
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
                    # The audit entry committed with the message names it.
                    audit.note(message.id)
                    # Should this first attempt die with its process, the job takes it up when its lease ends.
                    await schedule(session, DELIVERY_ATTEMPT, str(message.id), lease, replace=True)
                    self._hold(message)
                else:  # a concurrent send with the same key committed first
                    message = await self._repository.get_message_by_request(session, request.request_id)
                    assert message is not None
            if not fresh:
                ensure_same_send(message, key)
        if fresh:
            return await self.attempt_to_the_end(message)
        if message.status != MessageStatus.QUEUED:
            return message
        async with self._transaction() as session:
            claimed = await self._claim(session, message.id)
            if claimed is None:  # another attempt is under way, or it just finished
                current = await self._repository.get_message(session, message.id)
                assert current is not None
                return current
        return await self.attempt_to_the_end(claimed)

    async def enqueue(self, session: AsyncSession, request: SendRequest) -> Message:
        """Queue a message once per request id, in the caller's transaction (a consumer's), for the delivery
        attempts' job pool: stored QUEUED with its attempt due at once, nothing attempted here. A known
        request id answers its message.

        Raises InvalidArgument (no provider for the channel, template for another channel), NotFound
        (template) or AlreadyExists (request id reused with other content); nothing is written then.
        """
        self._check_channel(request.channel)
        key = send_fingerprint(request)
        message = await self._repository.get_message_by_request(session, request.request_id)
        if message is not None:
            ensure_same_send(message, key)
            return message
        version = await self._templates.sendable_version(session, request.template_id, request.channel)
        message = await self._repository.insert_message(
            session, self._row(request, key, template_version=version)
        )
        if message is None:  # a concurrent send with the same key committed first
            message = await self._repository.get_message_by_request(session, request.request_id)
            assert message is not None
            ensure_same_send(message, key)
            return message
        await schedule(session, DELIVERY_ATTEMPT, str(message.id), timedelta(0), replace=True)
        return message

    async def _claim(self, session: AsyncSession, message_id: uuid.UUID) -> Message | None:
        """Take the lease for one more attempt (None if the message is final or leased by another); its job
        waits for the end of the lease, so an attempt that never reports back is made again then."""
        claimed = await self._repository.claim(session, message_id, lease=self._policy.lease)
        if claimed is not None:
            await schedule(session, DELIVERY_ATTEMPT, str(message_id), self._policy.lease, replace=True)
            self._hold(claimed)
        return claimed

    def _check_channel(self, channel: Channel) -> None:
        if channel not in self._registry.channels:
            delivered = ", ".join(sorted(f"CHANNEL_{c.value.upper()}" for c in self._registry.channels))
            raise InvalidArgument(
                message=f"channel {channel.value} cannot be delivered: no provider is configured for it",
                violations=[
                    FieldViolation(
                        "channel", f"no provider for this channel; delivered: {delivered or 'none'}"
                    )
                ],
            )

    async def attempt_to_the_end(self, message: Message, prefetched: Prefetched | None = None) -> Message:
        """Run an attempt (whose lease the caller holds) that the caller's cancellation cannot cut short.

        A caller that gives up (deadline, cancel, a stopping job worker) must not cut an attempt between the
        provider taking the message and the outcome being recorded: that would send it twice. A graceful
        stop waits for these (release_leases)."""
        task = asyncio.ensure_future(self.attempt(message, prefetched))
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

    async def attempt(self, message: Message, prefetched: Prefetched | None = None) -> Message:
        """One delivery attempt of a message whose lease the caller holds; records and returns the outcome.

        `prefetched` is what identity and profile said of the message's person already (fetched for a batch
        of attempts: `contacts_for`); what it lacks is asked here."""
        person = prefetched.person if prefetched is not None else None
        data = prefetched.data if prefetched is not None else None
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
                if message.attempt_count > self._max_attempts(message):
                    # An attempt died without reporting back (its lease ran out) and none are left.
                    raise PermanentFailure(
                        f"gave up after {message.attempt_count - 1} attempts: {message.error or 'no answer'}"
                    )
                if message.attempt_provider:
                    # An attempt handed it to a provider and died before recording the outcome.
                    found = await self._failover.reconcile(message)
                    if found is not None:
                        return await self._record(message, message.recipient, None, found)
                span.set_attribute("omni.contacts_batched", person is not None)
                span.set_attribute("omni.profile_batched", data is not None)
                if isinstance(person, PermanentFailure):
                    raise person
                if person is None:
                    person = await self._contacts.person_of(message.person_id)
                addresses = [
                    slot.provider.address_of(person) for slot in self._registry.chain(message.channel)
                ]
                recipient = next((address for address in addresses if address), "")
                if not recipient:
                    raise PermanentFailure(f"no {message.channel.value} address")
                # Asked at every attempt: consent taken back after a transient failure stops the retry.
                await self._check_verdict(person.person_id, message)
                if data is None:
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
                person = replace(person, traits=data.traits)
                accepted, recipient = await self._failover.dispatch(message, person, content)
            except DeliveryError as failure:
                span.set_attribute("omni.delivery.error", str(failure))
                return await self._record(message, recipient, failure)
            except Exception as error:
                # Nothing was handed to a provider (a provider's answer is recorded below, or by _record):
                # with the database away, the lease is given back once it answers.
                if database_unavailable(error):
                    await self._give_back(message)
                raise
            span.set_attribute("omni.provider", accepted.provider)
            return await self._record(message, recipient, None, accepted)

    async def contacts_for(self, messages: list[Message]) -> dict[uuid.UUID, Prefetched]:
        """What identity and profile say of the persons of a batch of messages, one call to each; what a
        service cannot answer now is left out (each attempt then asks, and fails transiently, on its own)."""
        if not messages:
            return {}
        person_ids = [m.person_id for m in messages]
        with tracer.start_as_current_span(
            "gateway contacts", attributes={"omni.message_count": len(messages)}
        ) as span:
            persons: dict[uuid.UUID, PersonContacts | PermanentFailure] = {}
            profiles: dict[uuid.UUID, PersonData] = {}
            try:
                persons = await self._contacts.persons_of(person_ids)
            except TransientFailure as failure:
                span.set_attribute("omni.delivery.error", str(failure))
                log.warning("persons of %d messages not fetched at once: %s", len(messages), failure)
            try:
                profiles = await self._contacts.data_of_many(person_ids)
            except TransientFailure as failure:
                span.set_attribute("omni.delivery.error", str(failure))
                log.warning("profiles of %d messages not fetched at once: %s", len(messages), failure)
        return {
            person_id: Prefetched(person=persons.get(person_id), data=profiles.get(person_id))
            for person_id in person_ids
        }

    async def _record(
        self,
        message: Message,
        recipient: str,
        failure: DeliveryError | None,
        accepted: Accepted | None = None,
    ) -> Message:
        status, error, retry_after = MessageStatus.SENT, "", None
        if failure is not None and failure.transient and message.attempt_count < self._max_attempts(message):
            status, error = MessageStatus.QUEUED, str(failure)
            retry_after = self._policy.next_delay(
                message.attempt_count,
                scheduled_s=getattr(failure, "scheduled_s", None),
                hint_s=getattr(failure, "retry_after_s", None),
            )
        elif failure is not None and failure.transient:
            status, error = MessageStatus.FAILED, f"gave up after {message.attempt_count} attempts: {failure}"
        elif failure is not None:
            status, error = MessageStatus.FAILED, str(failure)
        # The error quotes other systems (an SMTP server's reply): a NUL in it could never be stored.
        error = without_control_characters(error)

        async def record() -> Message:
            async with self._transaction() as session:
                updated = await self._repository.record_outcome(
                    session,
                    message.id,
                    status=status,
                    recipient=recipient,
                    error=error,
                    retry_after=retry_after,
                    provider=accepted.provider if accepted else "",
                    provider_message_id=accepted.provider_message_id if accepted else "",
                    provider_details=dict(accepted.details) if accepted else None,
                )
                self._leases.pop(message.id, None)
                if updated is None:
                    # Finished meanwhile (its person forgotten): keep what is stored, announce nothing.
                    current = await self._repository.get_message(session, message.id)
                    assert current is not None
                    return current
                if isinstance(failure, AddressRefused):
                    await self._repository.suppress(
                        session,
                        channel=failure.channel.value,
                        key=address_hash(failure.channel, failure.address),
                        reason=SuppressionReason.ADDRESS_INVALID.value,
                        provider=failure.provider,
                        message_id=message.id,
                    )
                if retry_after is not None:
                    await schedule(session, DELIVERY_ATTEMPT, str(message.id), retry_after, replace=True)
                else:
                    await cancel(session, DELIVERY_ATTEMPT, str(message.id))
                await stage_outcome(self._outbox, session, updated)
            return updated

        # What happened is known now (the provider may have taken the message): a database that is away
        # for a moment must not lose it, or the attempt would be made again when its lease runs out.
        return await self._while_the_lease_lasts(
            message, record, f"recording the outcome of message {message.id}"
        )

    async def _while_the_lease_lasts(
        self, message: Message, work: Callable[[], Awaitable[T]], what: str
    ) -> T:
        """Run work (a transaction) again while the database does not answer, as long as the attempt's lease
        leaves time for it to finish: after that another attempt may take the message, and this one must not
        write over it."""
        end = message.claimed_until or self._leases.get(message.id)
        margin = min(LEASE_MARGIN, self._policy.lease / 4)
        left = (end - datetime.now(UTC) - margin).total_seconds() if end is not None else 0.0
        return await retry_while_unavailable(work, name=f"gateway: {what}", timeout_s=left)

    async def _give_back(self, message: Message) -> None:
        """An attempt that cannot go on for want of the database, before any provider took the message: give
        its lease back once the database answers (while the lease lasts), its job due at once, so the message
        is attempted again then rather than when the lease runs out."""
        end = message.claimed_until or self._leases.get(message.id)
        if end is None:
            return

        async def give_back() -> None:
            async with self._transaction() as session:
                released = await self._repository.release_leases(session, {message.id: end})
                if released:
                    await schedule(session, DELIVERY_ATTEMPT, str(message.id), timedelta(0), replace=True)
            self._leases.pop(message.id, None)

        try:
            await self._while_the_lease_lasts(
                message, give_back, f"giving back the lease of message {message.id}"
            )
        except Exception as error:  # the lease runs out then, and the message is attempted again all the same
            log.warning("could not give back the lease of message %s: %s", message.id, error)

    def _max_attempts(self, message: Message) -> int:
        """Attempts in all for the message: its channel's providers' own schedules' where each keeps one
        (the webhook's), else the policy's."""
        return self._policy.attempts_for(
            [
                slot.provider.max_attempts if isinstance(slot.provider, RetrySchedule) else None
                for slot in self._registry.chain(message.channel)
            ]
        )

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
