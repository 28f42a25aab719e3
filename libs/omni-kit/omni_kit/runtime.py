"""What a running service owns, started and stopped in order: gRPC port, database, event log, relay,
consumers, services.

A service's main builds a Runtime, adds its consumers, and serves its servicers:

    runtime = Runtime("identity", settings)
    await runtime.open()
    runtime.add_consumer(durable=..., event_types=[...], handler=...)
    runtime.add_job_kind("identity.something_due", handler, lease=timedelta(minutes=1))
    await runtime.serve(service_names=[...], register=...)
    ...
    await runtime.close()

Every service starts the same way: `open()` binds the gRPC port first and answers health checks NOT_SERVING
(other calls UNAVAILABLE), then waits for the database (applying the migrations if asked) and NATS, retrying
with backoff while they are unreachable; `serve()` registers the services and reports SERVING. From then on
a probe checks the database every `db_health_interval_s` and health says NOT_SERVING while it does not
answer (the health name "liveness" stays SERVING: that is for a liveness probe, which should not restart a
service for an outage). `close()` drains: new calls refused, calls in flight finished within the grace
period, then the consumers, jobs and background work, the relay's last drain, NATS and the database.

Transactions go through `runtime.transaction()`, which commits and then wakes the outbox relay (events
staged) and the job worker (jobs scheduled to fall due before it would look).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import grpc
import nats
import stamina
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from omni.audit.v1 import audit_pb2_grpc
from omni_kit.audit import SERVICE_NAME as AUDIT_SERVICE
from omni_kit.audit import AuditInterceptor, AuditLog, AuditServicer
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
from omni_kit.db import create_engine, database_unavailable, migrate, session_factory
from omni_kit.grpc_server import GrpcServer
from omni_kit.ratelimit import RateLimitInterceptor, RateLimits
from omni_kit.scheduler import Backoff, JobHandler, JobWorker, scheduled_due
from omni_kit.security import ClientSecurity, ScopeTable, auth_interceptor, nats_security, server_tls
from omni_kit.settings import ServiceSettings
from omni_kit.telemetry import instrument_engine

log = logging.getLogger(__name__)

T = TypeVar("T")


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
        self._probe: DatabaseProbe | None = None
        self._close_hooks: list[Callable[[], Awaitable[object]]] = []
        self._closed = False
        self._client_security = ClientSecurity.from_settings(settings)
        self.audit_log = AuditLog(self.transaction)

    async def open(self) -> None:
        """Bind the gRPC port and answer health checks (NOT_SERVING) at once; then reach the database, applying
        the migrations if asked, and NATS, waiting with backoff while either is unreachable; start the relay."""
        self.server = GrpcServer(
            domain=f"omni.{self.name}",
            host=self.settings.grpc_host,
            port=self.settings.grpc_port,
            on_database_unavailable=self._database_trouble,
            credentials=server_tls(self.settings),
            interceptors=self._interceptors(),
            health_port=self.settings.grpc_health_port,
        )
        await self.server.start()
        try:
            await self._connect()
        except BaseException:
            # Failed or cancelled (a stop while waiting for the database): let nothing hold the port.
            await self.close()
            raise

    def _interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """Audit (of the scope table's audited RPCs, refusals included), then authorisation and rate limits
        when on."""
        table = ScopeTable.load()
        chain: list[grpc.aio.ServerInterceptor] = [AuditInterceptor(table.audited, self.audit_log)]
        auth = auth_interceptor(self.settings, table)
        if auth is not None:
            chain.append(auth)
        if self.settings.rate_limit_per_s is not None:
            # Inside authorisation, so the limit is the authenticated caller's.
            limits = RateLimits(
                self.settings.rate_limit_per_s, self.settings.rate_limit_burst, self.settings.rate_limits
            )
            chain.append(RateLimitInterceptor(limits))
        return chain

    async def _connect(self) -> None:
        self.engine = create_engine(
            self.settings.database_url,
            application_name=f"omni-{self.name}",
            pool_size=self.settings.db_pool_size,
            statement_timeout_ms=self.settings.db_statement_timeout_ms,
        )
        instrument_engine(self.engine)
        self.sessions = session_factory(self.engine)
        await self.when_database_answers(self._prepare_database)
        # The client keeps trying to connect until NATS answers (max_reconnect_attempts=-1).
        self.nats = await nats.connect(
            servers=self.settings.nats_servers,
            name=f"omni-{self.name}",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            # Bounds the drain at close; everything that matters (the outbox) is already flushed by then.
            drain_timeout=5,
            **nats_security(self.settings, self.name),
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

    async def _prepare_database(self) -> None:
        if self.settings.migrate_on_start and self._migrations is not None:
            await migrate(self.engine, self._migrations)
            return
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def when_database_answers(self, step: Callable[[], Awaitable[T]]) -> T:
        """Run start-up work that needs the database (migrations, loading what the service keeps in memory)
        until it does not fail for want of the database: while the database is unreachable, say so and try
        again after a backoff growing from half a second to ten. Other errors are raised."""

        def unreachable(error: BaseException) -> bool:
            if not database_unavailable(error):
                return False
            log.warning("%s: the database is unreachable (%s); trying again", self.name, error)
            return True

        async for attempt in stamina.retry_context(
            on=unreachable, attempts=None, timeout=None, wait_initial=0.5, wait_max=10.0, wait_jitter=0.5
        ):
            with attempt:
                return await step()
        raise AssertionError("unreachable: attempts are unlimited")

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
        the job worker if it scheduled jobs). In an audited call, the first transaction that writes carries
        the call's audit entry (omni_kit.audit)."""
        async with self.sessions() as session, session.begin():
            yield session
            audited = await self.audit_log.stage(session)
            staged = outbox_staged(session)
            due = scheduled_due(session)
        if audited is not None:
            audited.committed()
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
            # A consumer waiting out an outage of the database has health say so at once.
            on_unavailable=self._database_trouble,
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

    @property
    def client_security(self) -> ClientSecurity:
        """How this service's channels reach the others (TLS, its certificate, its token), from its settings:
        pass it to omni_kit.grpc_client.channel."""
        return self._client_security

    def track_channel(self, channel: grpc.aio.Channel) -> grpc.aio.Channel:
        """Close a client channel when the service closes."""
        self._channels.append(channel)
        return channel

    async def serve(
        self, *, service_names: Sequence[str], register: Callable[[grpc.aio.Server], None]
    ) -> int:
        """Start the consumers and the job worker, register the services on the gRPC server and report
        SERVING; from now on the database is probed and health follows it. Return the bound port."""
        assert self.server is not None, "open() first"
        for consumer in self.consumers:
            await consumer.start()
            self._consumer_tasks.append(asyncio.create_task(consumer.run(), name=consumer.durable))
        if self.jobs.kinds:
            self._jobs_task = asyncio.create_task(self.jobs.run(), name=self.jobs.name)
        audit = AuditServicer(self.audit_log, self.sessions)

        def register_with_audit(server: grpc.aio.Server) -> None:
            register(server)
            audit_pb2_grpc.add_AuditServiceServicer_to_server(audit, server)

        self.server.add_services([*service_names, AUDIT_SERVICE], register_with_audit)
        server = self.server

        async def database_changed(answering: bool) -> None:
            if answering:
                # The connections pooled before the outage went down with it, and a call on one would fail
                # though the database answers (asyncpg used directly does not tell the pool): new ones.
                await self.engine.dispose()
            await server.set_serving(answering)

        self._probe = DatabaseProbe(
            self.name,
            self.settings.database_url,
            database_changed,
            interval_s=self.settings.db_health_interval_s,
        )
        await self.server.set_serving(True)
        self._tasks.append(asyncio.create_task(self._probe.run(), name=f"{self.name}-database-probe"))
        log.info("%s serving on %s:%d", self.name, self.settings.grpc_host, self.server.port)
        return self.server.port

    def _database_trouble(self) -> None:
        """A call found the database unreachable: probe it now rather than at the next interval."""
        if self._probe is not None:
            self._probe.wake()

    def on_close(self, hook: Callable[[], Awaitable[object]]) -> None:
        """Run hook at close, once the calls, consumers, jobs and background work have stopped, before the
        relay's last drain and the database closes (e.g. giving back leases on work this process held)."""
        self._close_hooks.append(hook)

    @property
    def port(self) -> int:
        """The gRPC port the service listens on."""
        assert self.server is not None
        return self.server.port

    async def close(self) -> None:
        """Stop in order: health NOT_SERVING, new calls refused and those in flight finished (within the
        grace period), consumers, jobs, background work, close hooks, relay drain, NATS, database. A second
        call does nothing."""
        if self._closed:
            return
        self._closed = True
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
        for hook in self._close_hooks:
            try:
                await hook()
            except Exception:
                log.exception("%s: a close hook failed", self.name)
        if self._probe is not None:
            await self._probe.close()
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


class DatabaseProbe:
    """Checks, every interval, that the service's database answers (SELECT 1 on a connection of its own, so a
    busy pool does not count as an outage) and reports the change when it stops or starts answering."""

    def __init__(
        self,
        name: str,
        database_url: str,
        report: Callable[[bool], Awaitable[None]],
        *,
        interval_s: float,
        timeout_s: float = 5.0,
    ) -> None:
        self._name = name
        self._engine = create_engine(database_url, application_name=f"omni-{name}-health", pool_size=1)
        self._report = report
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._woken = asyncio.Event()
        self.answering = True

    def wake(self) -> None:
        """Probe now."""
        self._woken.set()

    async def check(self) -> bool:
        """Whether the database answers now."""
        try:
            async with asyncio.timeout(self._timeout_s), self._engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception as error:
            if self.answering:
                log.warning("%s: the database does not answer (%s); health NOT_SERVING", self._name, error)
            return False
        return True

    async def run(self) -> None:
        """Probe until cancelled, reporting each change."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval_s):
                    await self._woken.wait()
            self._woken.clear()
            answering = await self.check()
            if answering != self.answering:
                if answering:
                    log.info("%s: the database answers again; health SERVING", self._name)
                self.answering = answering
                await self._report(answering)

    async def close(self) -> None:
        """Close the probe's connection."""
        await self._engine.dispose()


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
