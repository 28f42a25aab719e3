"""What the gateway consumes on its one durable consumer: decisioning.send_requested, and identity's lineage
(through omni_kit.lineage) for erasures. Profile's contact verdicts are kept by omni_kit.contact's handler, on
a durable of their own. What the gateway publishes is in events.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncSession

from omni.decisioning.v1 import events_pb2 as decisioning_events
from omni.events.v1 import envelope_pb2
from omni.gateway.v1 import gateway_pb2
from omni_gateway.delivery import Delivery, ensure_same_send
from omni_gateway.domain import Channel, MessageStatus, SendRequest
from omni_gateway.repository import FORGOTTEN, Repository
from omni_gateway.suppression import NOT_PERSONAL_ADDRESSES, SuppressionReason, address_hash
from omni_gateway.terminals.store import TerminalMessages
from omni_gateway.wire import parse_send_request, send_fingerprint
from omni_kit.bus import PermanentError, unpack
from omni_kit.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from omni_kit.idempotency import forget_answers
from omni_kit.ids import new_id
from omni_kit.lineage import LINEAGE_EVENTS, Erasure, Lineage, LineageTable

SEND_REQUESTED = "decisioning.send_requested"

Handler = Callable[[AsyncSession, envelope_pb2.Envelope], Awaitable[None]]


class SendRequestedHandler:
    """Queues the message decisioning asked for, under the same request id key as SendMessage.

    The message is inserted QUEUED with its first attempt scheduled (a job of the delivery attempts' pool,
    due at once) in the consumer's transaction, so acknowledging the event and queueing its message are one
    commit; nothing is sent inside the consumer, and the pool's bounded concurrency, not the event stream,
    sets the pace towards the providers. The request id makes redeliveries harmless: a message already
    queued or sent is not queued again. The attempt joins the consumer's trace (the message keeps its trace
    context), so the trace goes on from the journey to the provider. A transient failure is retried by the
    gateway's retry jobs, not by redelivering the event. The event carries no purpose: a journey's message is marketing, sent only
    while profile's verdict allows marketing on the channel, and FAILED (announced) otherwise; it waits
    (queued) until the gateway holds verdicts at least as new as those decisioning chose the channel by. A request
    that can never be sent (unknown or archived template, channel the gateway cannot deliver) is recorded as a FAILED
    message with a message_failed event, so the journey hears of it. One too malformed to record (no
    request id, no person) or reusing a request id for other content is a PermanentError: dead-lettered at
    once, with the reason, for someone to look at. A request for a forgotten person (staged by decisioning
    before the erasure reached it) is recorded as a FAILED message holding nothing of the request but what
    its key needs, never sent and not announced: the announcement would carry the person again.
    """

    def __init__(self, delivery: Delivery, repository: Repository, lineage: LineageTable) -> None:
        self._delivery = delivery
        self._repository = repository
        self._lineage = lineage

    async def __call__(self, session: AsyncSession, envelope: envelope_pb2.Envelope) -> None:
        """Handle one decisioning.send_requested envelope."""
        event = unpack(envelope, decisioning_events.SendRequestedEvent)
        try:
            request = parse_send_request(
                gateway_pb2.SendMessageRequest(
                    request_id=event.request_id,
                    person_id=event.person_id,
                    channel=event.channel,
                    template_id=event.template_id,
                    journey_id=event.journey_id,
                    variables=event.variables if event.HasField("variables") else None,
                ),
                contact_verdict_version=event.contact_verdict_version,
            )
        except InvalidArgument as error:
            raise PermanentError(f"send request cannot be recorded: {_describe(error)}") from error
        if (await self._lineage.whereabouts(session, [request.person_id]))[request.person_id].forgotten:
            await self._forgotten(session, request)
            return
        try:
            # Queued in this transaction, with the event's acknowledgement; the job pool sends it.
            await self._delivery.enqueue(session, request)
        except (InvalidArgument, NotFound, FailedPrecondition) as error:
            await self._delivery.reject(request, _describe(error))
        except AlreadyExists as error:
            raise PermanentError(str(error)) from error

    async def _forgotten(self, session: AsyncSession, request: SendRequest) -> None:
        key = send_fingerprint(request)
        values = {
            "id": new_id(),
            "request_id": request.request_id,
            "fingerprint": key,
            "person_id": request.person_id,
            "channel": request.channel,
            "template_id": request.template_id,
            "journey_id": request.journey_id,
            "purpose": request.purpose,
        }
        stored = await self._repository.insert_message(
            session, values, status=MessageStatus.FAILED, error=FORGOTTEN
        )
        if stored is None:  # the key was used before
            known = await self._repository.get_message_by_request(session, request.request_id)
            assert known is not None
            try:
                ensure_same_send(known, key)
            except AlreadyExists as error:
                raise PermanentError(str(error)) from error


class ErasureHook:
    """Redacts the messages of a forgotten person (every id it had, and every id leading to it here) and ends
    those not sent yet; omni_kit.lineage keeps the tombstones.

    Runs in the consumer's transaction and publishes nothing: a message_failed would carry the person
    again. Ids the gateway never saw touch nothing; a redelivery redacts nothing more.
    """

    def __init__(self, repository: Repository) -> None:
        self._repository = repository

    async def __call__(self, session: AsyncSession, erasure: Erasure) -> None:
        """Suppress the persons' addresses their messages went to (as hashes: suppression.py; not a store's
        or a webhook destination's, which are not theirs), redact the
        messages; forget the stored answers that show them (none do yet: templates name no person)."""
        person_ids = list(erasure.person_ids)
        for channel, address in await self._repository.recipients_of(session, person_ids):
            domain_channel = Channel(channel)
            if domain_channel in NOT_PERSONAL_ADDRESSES:
                continue
            await self._repository.suppress(
                session,
                channel=channel,
                key=address_hash(domain_channel, address),
                reason=SuppressionReason.ERASED.value,
            )
        await self._repository.forget_persons(session, person_ids)
        await forget_answers(session, erasure.person_ids)
        # Store messages waiting at the tills hold personal text (a name on a coupon): deleted.
        await TerminalMessages().forget(session, list(erasure.person_ids))


class EventRouter:
    """The gateway's one consumer handler: each event type to its handler, so all apply in log order (an
    erasure before a send requested after it)."""

    def __init__(self, send_requested: SendRequestedHandler, lineage: Lineage) -> None:
        self._handlers: dict[str, Handler] = {
            SEND_REQUESTED: send_requested,
            **dict.fromkeys(LINEAGE_EVENTS, lineage),
        }

    @property
    def event_types(self) -> list[str]:
        """The event types routed."""
        return list(self._handlers)

    async def __call__(self, session: AsyncSession, envelope: envelope_pb2.Envelope) -> None:
        """Hand the envelope to the handler of its type; other types cannot arrive (the consumer filters)."""
        handler = self._handlers.get(envelope.type)
        if handler is None:
            raise PermanentError(f"the gateway does not consume {envelope.type!r}")
        await handler(session, envelope)


def _describe(error: InvalidArgument | NotFound | FailedPrecondition) -> str:
    if isinstance(error, InvalidArgument) and error.violations:
        return "; ".join(f"{v.field}: {v.description}" for v in error.violations)
    return str(error)
