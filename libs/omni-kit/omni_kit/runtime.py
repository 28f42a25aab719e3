"""What a running service owns, started and stopped in order: database, event log, relay, consumers, gRPC.

A service's main builds a Runtime, adds its consumers, and serves its servicers:

    runtime = Runtime("identity", settings)
    await runtime.open()
    runtime.add_consumer(durable=..., event_types=[...], handler=...)
    runtime.add_job_kind("identity.something_due", handler, lease=timedelta(minutes=1))
    await runtime.serve(service_names=[...], register=...)
    ...
    await runtime.close()

Transactions go through `runtime.transaction()`, which commits and then wakes the outbox relay (events
staged) and the job worker (jobs scheduled to fall due before it would look).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import timedelta
from pathlib import Path

import grpc
import nats
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from omni_kit.bus import (
    EventConsumer,
    Handler,
    Outbox,
    OutboxRelay,
    ensure_streams,
    events_stream,
    outbox_staged,
    subject_for,
)
from omni_kit.bus.outbox import HEADER_ALLOWANCE
from omni_kit.db import create_engine, migrate, session_factory
from omni_kit.grpc_server import GrpcServer
from omni_kit.scheduler import Backoff, JobHandler, JobWorker, scheduled_due
from omni_kit.settings import ServiceSettings
from omni_kit.telemetry import instrument_engine

log = logging.getLogger(__name__)


class Runtime:
    """The shared running parts of one service."""

    def __init__(self, name: str, settings: ServiceSettings, *, migrations: Path | None = None) -> None:
        self.name = name
        self.settings = settings
        self._migrations = migrations
        self.outbox = Outbox(
            producer=name,
            namespace=settings.event_namespace,
            max_envelope_bytes=settings.outbox_max_envelope_bytes,
        )
        self.jobs = JobWorker(
            self.transaction, poll_interval_s=settings.jobs_poll_interval_s, name=f"{name}-jobs"
        )
        self.engine: AsyncEngine
        self.sessions: async_sessionmaker[AsyncSession]
        self.nats: NatsClient
        self.js: JetStreamContext
        self.relay: OutboxRelay
        self.server: GrpcServer | None = None
        self.consumers: list[EventConsumer] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._consumer_tasks: list[asyncio.Task[None]] = []
        self._relay_task: asyncio.Task[None] | None = None
        self._jobs_task: asyncio.Task[None] | None = None
        self._channels: list[grpc.aio.Channel] = []

    async def open(self) -> None:
        """Connect to the database and NATS, apply migrations if asked, start the outbox relay."""
        self.engine = create_engine(
            self.settings.database_url,
            application_name=f"omni-{self.name}",
            pool_size=self.settings.db_pool_size,
            statement_timeout_ms=self.settings.db_statement_timeout_ms,
        )
        instrument_engine(self.engine)
        self.sessions = session_factory(self.engine)
        if self.settings.migrate_on_start and self._migrations is not None:
            await migrate(self.engine, self._migrations)
        self.nats = await nats.connect(
            servers=self.settings.nats_servers,
            name=f"omni-{self.name}",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            # Bounds the drain at close; everything that matters (the outbox) is already flushed by then.
            drain_timeout=5,
        )
        self.js = self.nats.jetstream()
        self._fit_envelopes_to_server()
        await ensure_streams(
            self.js, namespace=self.settings.event_namespace, replicas=self.settings.nats_stream_replicas
        )
        self.relay = OutboxRelay(
            self.engine, self.js, poll_interval_s=self.settings.outbox_poll_interval_s, client=self.nats
        )
        self._relay_task = asyncio.create_task(self.relay.run(), name=f"{self.name}-outbox-relay")
        self._tasks.append(self._relay_task)

    def _fit_envelopes_to_server(self) -> None:
        """Keep the largest staged event under what the NATS server takes (its max_payload, headers included),
        so that nothing staged is too large to publish."""
        fitting = self.nats.max_payload - HEADER_ALLOWANCE
        if fitting < self.outbox.max_envelope_bytes:
            log.warning(
                "%s: the NATS server takes messages of at most %d bytes: events are limited to %d bytes "
                "(outbox_max_envelope_bytes is %d)",
                self.name,
                self.nats.max_payload,
                fitting,
                self.outbox.max_envelope_bytes,
            )
            self.outbox.max_envelope_bytes = fitting

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session in a transaction: committed on success (then the relay is woken if it staged events, and
        the job worker if it scheduled jobs)."""
        async with self.sessions() as session, session.begin():
            yield session
            staged = outbox_staged(session)
            due = scheduled_due(session)
        if staged:
            self.relay.wake()
        if due is not None:
            self.jobs.notify(due)

    def add_consumer(self, *, durable: str, event_types: Sequence[str], handler: Handler) -> EventConsumer:
        """Register a durable consumer of some event types (e.g. "identity.persons_merged"); starts with serve()."""
        namespace = self.settings.event_namespace
        consumer = EventConsumer(
            self.js,
            self.sessions,
            durable=f"{self.name}-{durable}",
            stream=events_stream(namespace),
            subjects=[subject_for(t, namespace) for t in event_types],
            handler=handler,
            max_deliver=self.settings.consumer_max_deliver,
            backoff_s=self.settings.consumer_backoff_s,
            after_commit=self.relay.wake,
            on_scheduled=self.jobs.notify,
            inbox_retention_s=self.settings.inbox_retention_s,
            inbox_purge_interval_s=self.settings.inbox_purge_interval_s,
        )
        self.consumers.append(consumer)
        return consumer

    def add_job_kind(
        self,
        kind: str,
        handler: JobHandler,
        *,
        lease: timedelta = timedelta(seconds=60),
        batch_size: int = 100,
        max_attempts: int = 10,
        backoff: Backoff | None = None,
    ) -> None:
        """Run the due jobs of a kind (omni_kit.scheduler) with handler; the worker starts with serve()."""
        self.jobs.register(
            kind, handler, lease=lease, batch_size=batch_size, max_attempts=max_attempts, backoff=backoff
        )

    def add_task(self, factory: Callable[[], asyncio.Task[None]]) -> None:
        """Run a background task for the service's lifetime (cancelled at close)."""
        self._tasks.append(factory())

    def track_channel(self, channel: grpc.aio.Channel) -> grpc.aio.Channel:
        """Close a client channel when the service closes."""
        self._channels.append(channel)
        return channel

    async def serve(
        self, *, service_names: Sequence[str], register: Callable[[grpc.aio.Server], None]
    ) -> int:
        """Start the consumers and the gRPC server; return the bound port."""
        for consumer in self.consumers:
            await consumer.start()
            self._consumer_tasks.append(asyncio.create_task(consumer.run(), name=consumer.durable))
        if self.jobs.kinds:
            self._jobs_task = asyncio.create_task(self.jobs.run(), name=self.jobs.name)
        self.server = GrpcServer(
            domain=f"omni.{self.name}",
            service_names=service_names,
            register=register,
            host=self.settings.grpc_host,
            port=self.settings.grpc_port,
        )
        await self.server.start()
        log.info("%s serving on %s:%d", self.name, self.settings.grpc_host, self.server.port)
        return self.server.port

    @property
    def port(self) -> int:
        """The gRPC port the service listens on."""
        assert self.server is not None
        return self.server.port

    async def close(self) -> None:
        """Stop in order: health NOT_SERVING and in-flight calls, consumers, relay drain, NATS, database."""
        if self.server is not None:
            await self.server.stop(self.settings.shutdown_grace_s)
        for consumer in self.consumers:
            consumer.stop()
        if self._consumer_tasks:
            # Let each consumer finish the message in hand; cancel what is still fetching after that.
            _, pending = await asyncio.wait(self._consumer_tasks, timeout=5.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._jobs_task is not None:
            # Let the jobs in hand commit; what is left is claimed again when its lease runs out.
            self.jobs.stop()
            _, pending_jobs = await asyncio.wait([self._jobs_task], timeout=5.0)
            for task in pending_jobs:
                task.cancel()
            await asyncio.gather(self._jobs_task, return_exceptions=True)
        # Background work (clocks, retries) stops before the last drain, so what it committed is published now
        # rather than at the next start; the relay's own task goes last.
        background = [t for t in self._tasks if t is not self._relay_task]
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        if hasattr(self, "relay"):
            await self.relay.drain()
        if self._relay_task is not None:
            self._relay_task.cancel()
            await asyncio.gather(self._relay_task, return_exceptions=True)
        for channel in self._channels:
            await channel.close()
        if hasattr(self, "nats"):
            with contextlib.suppress(Exception):
                await self.nats.drain()
        if hasattr(self, "engine"):
            await self.engine.dispose()


# A service call allocates many short-lived objects (a batch resolve some 10^5); with the default threshold
# the collector ran every 700 allocations, and every full collection walked everything the process loaded at
# start (modules, protobuf descriptors, the engine): about a seventh of identity's CPU under load.
_GC_YOUNG_THRESHOLD = 10_000


def settle_garbage_collector() -> None:
    """Once a service process has started: leave what start-up built out of later collections (it lives as
    long as the process) and collect the young generation less often. Process-wide, so called by whoever
    owns the process (`omni serve`), not by a service's start()."""
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, _GC_YOUNG_THRESHOLD), middle, old)
