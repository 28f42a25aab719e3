"""Durable JetStream consumers that apply each event once, in the same transaction as its effect.

Each consumer is a durable pull consumer with explicit ack. For every event it opens a transaction,
records the event id in the inbox (a duplicate is skipped), runs the handler and commits, then acks. A
failing handler rolls back and the message is redelivered after a backoff; after `max_deliver` attempts (or
at once, for a PermanentError) the event is copied to the dead-letter subject <namespace>.dlq.<durable>
with the error, and the message terminated.

A failure because something the consumer needs is unavailable (its database unreachable, a service answering
UNAVAILABLE: see `dependency_unavailable`) says nothing of the event, so it does not use up a delivery:
JetStream counts every redelivery, a nak as much as an expired ack wait, and a 20-second outage would
dead-letter perfectly good events. The consumer keeps the messages in hand instead (telling JetStream they are
in progress, so the ack wait does not run out), fetches nothing more, and applies them again with a backoff
until the dependency answers. Only failures of the event itself (poison) count toward dead-lettering.

A message may hold a batch of events (an EnvelopeBatch, header Omni-Batch): its events are applied each
once, like the events of separate messages. When some fail, those applied stay applied (the inbox skips
them when the message comes again); the others are retried with the message, and dead-lettered one by one.

Every `inbox_purge_interval_s` the consumer forgets applied event ids older than `inbox_retention_s`, and it
never applies an event that old (it is dead-lettered): see inbox.py for why that keeps "at most once".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import TypeVar

import grpc
import sqlalchemy as sa
import stamina
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from omni.events.v1 import envelope_pb2
from omni_kit.bus.envelope import BATCH_HEADER, EnvelopeTooLarge, PermanentError, envelopes_in
from omni_kit.bus.inbox import DEFAULT_INBOX_RETENTION_S, check_age, purge_inbox
from omni_kit.bus.outbox import outbox_staged
from omni_kit.bus.tables import inbox_table
from omni_kit.db import database_unavailable
from omni_kit.errors import Unavailable
from omni_kit.scheduler.schedule import scheduled_due

log = logging.getLogger(__name__)
tracer = trace.get_tracer("omni_kit.bus")

T = TypeVar("T")

Handler = Callable[[AsyncSession, envelope_pb2.Envelope], Awaitable[None]]
"""Applies one event in the consumer's transaction. A handler that also has an async `finish(session)`
may gather work over the events of a transaction: `finish` runs after the last of them, before the commit,
and what it writes commits (or fails and is retried) with them."""

# One statement over an array however many events a transaction applies (a multi-row VALUES would be
# compiled anew for every count, with two parameters per event).
_INBOX_MANY = sa.text(
    "INSERT INTO inbox (consumer, event_id) SELECT :consumer, unnest(CAST(:ids AS uuid[])) "
    "ON CONFLICT DO NOTHING RETURNING event_id"
).columns(event_id=sa.Uuid)


class EventConsumer:
    """One durable consumer of a set of event subjects, feeding a handler."""

    def __init__(
        self,
        js: JetStreamContext,
        sessions: async_sessionmaker[AsyncSession],
        *,
        durable: str,
        stream: str,
        subjects: Sequence[str],
        handler: Handler,
        max_deliver: int = 5,
        backoff_s: Sequence[float] = (0.2, 1.0, 5.0, 15.0),
        batch_size: int = 100,
        max_events_per_transaction: int = 1000,
        ack_wait_s: float = 30.0,
        after_commit: Callable[[], None] | None = None,
        on_scheduled: Callable[[datetime], None] | None = None,
        inbox_retention_s: float = DEFAULT_INBOX_RETENTION_S,
        inbox_purge_interval_s: float = 600.0,
        on_unavailable: Callable[[], None] | None = None,
        outage_wait_max_s: float = 5.0,
    ) -> None:
        self._js = js
        self._sessions = sessions
        self.durable = durable
        self._stream = stream
        self._dlq_prefix = stream.removesuffix("_EVENTS").lower() + ".dlq."
        self._subjects = list(subjects)
        self._handler = handler
        self._max_deliver = max_deliver
        self._backoff_s = list(backoff_s)
        self._batch_size = batch_size
        self._max_events = max_events_per_transaction
        self._ack_wait_s = ack_wait_s
        self._after_commit = after_commit
        self._on_scheduled = on_scheduled
        self._inbox_retention_s = inbox_retention_s
        self._inbox_purge_interval_s = inbox_purge_interval_s
        self._on_unavailable = on_unavailable
        self._outage_wait_max_s = outage_wait_max_s
        self._next_purge: float | None = None
        self._stopping = False
        self._subscription: JetStreamContext.PullSubscription | None = None
        self.applied = 0
        self.dead_lettered = 0

    async def start(self) -> None:
        """Create or bind the durable consumer."""
        config = ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self._ack_wait_s,
            max_deliver=self._max_deliver + 1,
            filter_subjects=self._subjects,
            max_ack_pending=10_000,
        )
        await self._js.add_consumer(self._stream, config)
        self._subscription = await self._js.pull_subscribe_bind(self.durable, stream=self._stream)

    async def run(self) -> None:
        """Fetch and apply messages until stopped."""
        assert self._subscription is not None, "start() first"
        try:
            await self._consume(self._subscription)
        finally:
            # An open pull subscription would hold a connection drain for its whole timeout.
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()

    async def _consume(self, subscription: JetStreamContext.PullSubscription) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            if self._next_purge is None or loop.time() >= self._next_purge:
                self._next_purge = loop.time() + self._inbox_purge_interval_s
                await self._purge_quietly()
            try:
                messages = await subscription.fetch(self._batch_size, timeout=0.5)
            except (NatsTimeoutError, TimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception:
                if self._stopping:
                    return
                log.exception("%s: fetch failed", self.durable)
                await asyncio.sleep(1.0)
                continue
            await self.handle_batch(messages)

    async def purge_inbox(self, now: datetime | None = None) -> int:
        """Forget applied event ids older than the inbox retention (in bounded batches); return how many."""
        return await purge_inbox(self._sessions, self.durable, self._inbox_retention_s, now=now)

    async def _purge_quietly(self) -> None:
        try:
            purged = await self.purge_inbox()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: purging the inbox failed; trying again later", self.durable)
            return
        if purged:
            log.info("%s: forgot %d applied events older than the inbox retention", self.durable, purged)

    def stop(self) -> None:
        """Ask the loop to finish after the current batch."""
        self._stopping = True

    async def handle_batch(self, messages: list[Msg]) -> None:
        """Apply fetched messages in few transactions (one commit, one inbox statement each), then ack them.

        Up to max_events_per_transaction events go in one transaction. When any event of it fails, it rolls
        back and its messages are applied again one event at a time, so a poison event is retried and
        dead-lettered on its own and the others go through. While a dependency is unavailable the messages
        stay in hand (in progress) and are applied when it answers; if the consumer is stopped meanwhile, the
        messages not yet settled are left to JetStream to deliver again.
        """
        keeping = asyncio.create_task(self._keep_in_progress(messages), name=f"{self.durable}-in-progress")
        try:
            await self._handle_batch(messages)
        except _StoppedInOutage:
            log.info("%s: stopped while waiting for an unavailable dependency", self.durable)
        finally:
            keeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeping

    async def handle(self, message: Msg) -> None:
        """Apply one message's events once each, ack it, or schedule its redelivery or dead-lettering."""
        await self.handle_batch([message])

    async def _keep_in_progress(self, messages: list[Msg]) -> None:
        """Tell JetStream, every third of the ack wait, that the messages in hand not yet settled are still
        being worked on, so that a slow batch or one waiting out an outage is not delivered again (which
        would count toward max_deliver)."""
        while True:
            await asyncio.sleep(self._ack_wait_s / 3)
            for message in messages:
                if not message.is_acked:
                    with contextlib.suppress(Exception):
                        await message.in_progress()

    async def _despite_outages(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run work again, with a backoff, for as long as it fails because a dependency is unavailable (the
        messages in hand are kept in progress meanwhile); raise any other failure. Stopped meanwhile, raise
        _StoppedInOutage: the messages are left unsettled rather than counted as failed."""
        waiting = False

        def unavailable(error: BaseException) -> bool:
            nonlocal waiting
            if self._stopping or not dependency_unavailable(error):
                return False
            if not waiting:
                waiting = True
                log.warning(
                    "%s: a dependency is unavailable (%s); holding the messages in hand until it answers",
                    self.durable,
                    error,
                )
                if self._on_unavailable is not None:
                    self._on_unavailable()
            return True

        try:
            async for attempt in stamina.retry_context(
                on=unavailable,
                attempts=None,
                timeout=None,
                wait_initial=0.1,
                wait_max=self._outage_wait_max_s,
                wait_jitter=0.1,
            ):
                with attempt:
                    result = await work()
                    if waiting:
                        log.info("%s: the dependency answers again", self.durable)
                    return result
        except Exception as error:
            if self._stopping and dependency_unavailable(error):
                raise _StoppedInOutage from error
            raise
        raise AssertionError("unreachable: attempts are unlimited")

    async def _handle_batch(self, messages: list[Msg]) -> None:
        decoded: list[tuple[Msg, list[envelope_pb2.Envelope]]] = []
        for message in messages:
            try:
                decoded.append((message, envelopes_in(message.data, message.headers)))
            except Exception as error:
                await self._dead_letter(message, f"undecodable envelope: {error}")
        # A message delivered again failed before: its events go one at a time straight away.
        fresh = []
        for message, envelopes in decoded:
            if (message.metadata.num_delivered or 1) > 1:
                await self._handle_envelopes(message, envelopes)
            else:
                fresh.append((message, envelopes))
        for group in _transactions(fresh, self._max_events):
            if len(group) == 1 and len(group[0][1]) == 1:
                await self._handle_envelopes(*group[0])
                continue
            try:
                applied, staged = await self._despite_outages(partial(self._apply_together, group))
            except _StoppedInOutage:
                raise
            except Exception as error:
                log.info(
                    "%s: %d events together failed (%s); applying one at a time",
                    self.durable,
                    sum(len(envelopes) for _, envelopes in group),
                    error,
                )
                for message, envelopes in group:
                    await self._handle_envelopes(message, envelopes)
                continue
            self.applied += applied
            if staged and self._after_commit is not None:
                self._after_commit()
            for message, _ in group:
                await message.ack()

    async def _apply_together(self, group: list[tuple[Msg, list[envelope_pb2.Envelope]]]) -> tuple[int, bool]:
        applied = 0
        events = [(message, envelope) for message, envelopes in group for envelope in envelopes]
        ids = [uuid.UUID(e.id) for _, e in events]
        now = datetime.now(UTC)
        for (_, envelope), event_id in zip(events, ids, strict=True):
            check_age(envelope, event_id, now, self._inbox_retention_s)
        async with self._sessions() as session, session.begin():
            rows = await session.scalars(_INBOX_MANY, {"consumer": self.durable, "ids": ids})
            first_time = set(rows)
            for message, envelope in events:
                event_id = uuid.UUID(envelope.id)
                if event_id not in first_time:
                    continue
                first_time.discard(event_id)  # the same event twice in one batch is applied once
                with self._span(message, envelope) as span:
                    try:
                        await self._handler(session, envelope)
                    except Exception as error:
                        span.record_exception(error)
                        span.set_status(trace.Status(trace.StatusCode.ERROR, str(error)))
                        raise
                applied += 1
            await self._finish(session)
            staged = outbox_staged(session)
            due = scheduled_due(session)
        if due is not None and self._on_scheduled is not None:
            self._on_scheduled(due)
        return applied, staged

    async def _finish(self, session: AsyncSession) -> None:
        """Let a handler that gathers work over a transaction's events write it before the commit."""
        finish = getattr(self._handler, "finish", None)
        if finish is not None:
            await finish(session)

    @contextlib.contextmanager
    def _span(self, message: Msg, envelope: envelope_pb2.Envelope) -> Iterator[trace.Span]:
        """The consumer span of one event, a child of the trace that produced it."""
        parent = propagate.extract({**(message.headers or {}), **envelope.trace_context})
        token = otel_context.attach(parent)
        try:
            with tracer.start_as_current_span(
                f"{self.durable} process {envelope.type}",
                kind=trace.SpanKind.CONSUMER,
                attributes={
                    "messaging.system": "nats",
                    "messaging.destination.name": message.subject,
                    "messaging.message.id": envelope.id,
                    "messaging.consumer.group.name": self.durable,
                    "omni.person_id": envelope.person_id,
                },
            ) as span:
                yield span
        finally:
            otel_context.detach(token)

    async def _handle_envelopes(self, message: Msg, envelopes: list[envelope_pb2.Envelope]) -> None:
        failures: list[tuple[envelope_pb2.Envelope, Exception]] = []
        for envelope in envelopes:
            with self._span(message, envelope) as span:
                try:
                    await self._despite_outages(partial(self._apply, envelope))
                except _StoppedInOutage:
                    raise
                except Exception as error:
                    span.record_exception(error)
                    span.set_status(trace.Status(trace.StatusCode.ERROR, str(error)))
                    failures.append((envelope, error))
        if not failures:
            await message.ack()
        elif len(envelopes) == 1:
            await self._failed(message, failures[0][1])
        else:
            await self._failed_in_batch(message, failures)

    async def _failed_in_batch(
        self, message: Msg, failures: list[tuple[envelope_pb2.Envelope, Exception]]
    ) -> None:
        """Some events of a batch failed: dead-letter the hopeless ones, retry the message for the rest."""
        delivered = message.metadata.num_delivered or 1
        retry = []
        for envelope, error in failures:
            if _hopeless(error) or delivered >= self._max_deliver:
                log.error(
                    "%s: event %s of %s given up: %s", self.durable, envelope.id, message.subject, error
                )
                await self._dead_letter_event(message, envelope, repr(error))
            else:
                retry.append(error)
        if not retry:
            await message.ack()
            return
        delay = self._backoff_s[min(delivered - 1, len(self._backoff_s) - 1)]
        log.warning(
            "%s: %d events of %s failed (delivery %d), retrying in %.1fs: %s",
            self.durable,
            len(retry),
            message.subject,
            delivered,
            delay,
            retry[0],
        )
        await message.nak(delay=delay)

    async def _apply(self, envelope: envelope_pb2.Envelope) -> None:
        event_id = uuid.UUID(envelope.id)
        check_age(envelope, event_id, datetime.now(UTC), self._inbox_retention_s)
        async with self._sessions() as session, session.begin():
            first_time = await session.scalar(
                insert(inbox_table)
                .values(consumer=self.durable, event_id=event_id)
                .on_conflict_do_nothing()
                .returning(inbox_table.c.event_id)
            )
            if first_time is None:
                return
            await self._handler(session, envelope)
            await self._finish(session)
            staged = outbox_staged(session)
            due = scheduled_due(session)
        if due is not None and self._on_scheduled is not None:
            self._on_scheduled(due)
        self.applied += 1
        if staged and self._after_commit is not None:
            self._after_commit()

    async def _failed(self, message: Msg, error: Exception) -> None:
        delivered = message.metadata.num_delivered or 1
        if _hopeless(error):
            log.error("%s: %s can never be applied: %s", self.durable, message.subject, error)
            await self._dead_letter(message, repr(error))
            return
        if delivered >= self._max_deliver:
            log.error(
                "%s: giving up on %s after %d deliveries: %s", self.durable, message.subject, delivered, error
            )
            await self._dead_letter(message, repr(error))
            return
        delay = self._backoff_s[min(delivered - 1, len(self._backoff_s) - 1)]
        log.warning(
            "%s: %s failed (delivery %d), retrying in %.1fs: %s",
            self.durable,
            message.subject,
            delivered,
            delay,
            error,
        )
        await message.nak(delay=delay)

    async def _dead_letter_event(self, message: Msg, envelope: envelope_pb2.Envelope, error: str) -> None:
        """Dead-letter one event of a batch on its own, and mark it handled so a redelivery skips it."""
        headers = {k: v for k, v in (message.headers or {}).items() if k not in ("Nats-Msg-Id", BATCH_HEADER)}
        headers["Omni-Error"] = error[:1000]
        headers["Omni-Original-Subject"] = message.subject
        await self._js.publish(
            f"{self._dlq_prefix}{self.durable}", envelope.SerializeToString(), headers=headers
        )

        async def mark_handled() -> None:
            async with self._sessions() as session, session.begin():
                await session.execute(
                    insert(inbox_table)
                    .values(consumer=self.durable, event_id=uuid.UUID(envelope.id))
                    .on_conflict_do_nothing()
                )

        await self._despite_outages(mark_handled)
        self.dead_lettered += 1

    async def _dead_letter(self, message: Msg, error: str) -> None:
        headers = dict(message.headers or {})
        headers["Omni-Error"] = error[:1000]
        headers["Omni-Original-Subject"] = message.subject
        headers.pop("Nats-Msg-Id", None)
        await self._js.publish(f"{self._dlq_prefix}{self.durable}", message.data, headers=headers)
        await message.term()
        self.dead_lettered += 1


class _StoppedInOutage(Exception):
    """The consumer was stopped while it waited for an unavailable dependency."""


def dependency_unavailable(error: BaseException) -> bool:
    """Whether error says something the handler needs is unavailable now (the database unreachable, a service
    answering UNAVAILABLE), not that the event is wrong: applying it later may well succeed.

    An omni_kit Unavailable counts when its reason says unavailable (UNAVAILABLE, IDENTITY_UNAVAILABLE,
    DATABASE_UNAVAILABLE …), not when it reports another failure of the service called (profile's
    IDENTITY_FAILED for an INTERNAL answer): that may be the event's own doing, and holding it would stop the
    consumer for good instead of dead-lettering one event."""
    if database_unavailable(error):
        return True
    if isinstance(error, Unavailable):
        return error.reason == "UNAVAILABLE" or error.reason.endswith("_UNAVAILABLE")
    return isinstance(error, grpc.aio.AioRpcError) and error.code() == grpc.StatusCode.UNAVAILABLE


def _hopeless(error: Exception) -> bool:
    """Whether applying the event again can only fail again: it is dead-lettered at once."""
    # An event whose handler stages an event too large to publish would stage it again on every retry.
    return isinstance(error, PermanentError | EnvelopeTooLarge)


def _transactions(
    decoded: list[tuple[Msg, list[envelope_pb2.Envelope]]], max_events: int
) -> Iterator[list[tuple[Msg, list[envelope_pb2.Envelope]]]]:
    """Messages in order, grouped so that a group holds at most max_events events (or one message)."""
    group: list[tuple[Msg, list[envelope_pb2.Envelope]]] = []
    count = 0
    for message, envelopes in decoded:
        if group and count + len(envelopes) > max_events:
            yield group
            group, count = [], 0
        group.append((message, envelopes))
        count += len(envelopes)
    if group:
        yield group
