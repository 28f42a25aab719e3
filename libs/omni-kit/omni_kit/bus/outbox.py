"""Transactional outbox: events are rows written with the state change, published afterwards by the relay."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from google.protobuf.message import Message
from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from omni.events.v1 import envelope_pb2
from omni_kit.bus.envelope import make_envelope, subject_for
from omni_kit.bus.tables import outbox_table

log = logging.getLogger(__name__)

_STAGED = "omni_outbox_staged"


def outbox_staged(session: AsyncSession) -> bool:
    """True when the session's transaction staged events, so the relay has work once it commits."""
    return bool(session.info.get(_STAGED))


class Outbox:
    """Writes a service's events into its outbox table, inside the caller's transaction."""

    def __init__(self, producer: str, namespace: str = "omni") -> None:
        self.producer = producer
        self.namespace = namespace

    def envelope(
        self, payload: Message, *, event_type: str, person_id: str = "", occurred_at: datetime | None = None
    ) -> envelope_pb2.Envelope:
        """Build the envelope of an event of this producer."""
        return make_envelope(
            payload,
            event_type=event_type,
            producer=self.producer,
            person_id=person_id,
            occurred_at=occurred_at,
        )

    async def add(
        self,
        session: AsyncSession,
        payload: Message,
        *,
        event_type: str,
        person_id: str = "",
        occurred_at: datetime | None = None,
    ) -> envelope_pb2.Envelope:
        """Stage one event in the session's transaction; it is published only if the transaction commits."""
        envelope = self.envelope(payload, event_type=event_type, person_id=person_id, occurred_at=occurred_at)
        await self.add_envelopes(session, [envelope])
        return envelope

    async def add_envelopes(self, session: AsyncSession, envelopes: Sequence[envelope_pb2.Envelope]) -> None:
        """Stage many events at once (one multi-row insert)."""
        if not envelopes:
            return
        session.info[_STAGED] = True
        # One statement over arrays, however many events: a list of parameter sets would be one round trip
        # and one bind-processing pass per row, which dominates a large batch.
        await session.execute(
            _INSERT_MANY,
            {
                "ids": [uuid.UUID(e.id) for e in envelopes],
                "subjects": [subject_for(e.type, self.namespace) for e in envelopes],
                "types": [e.type for e in envelopes],
                "persons": [e.person_id or None for e in envelopes],
                "payloads": [e.SerializeToString() for e in envelopes],
                "headers": [json.dumps(dict(e.trace_context)) for e in envelopes],
            },
        )


_INSERT_MANY = sa.text(
    "INSERT INTO outbox (id, subject, type, person_id, payload, headers) "
    "SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:subjects AS text[]), CAST(:types AS text[]), "
    "CAST(:persons AS text[]), CAST(:payloads AS bytea[]), CAST(:headers AS jsonb[]))"
)


class OutboxRelay:
    """Publishes committed outbox rows to JetStream, oldest first, with the event id as Nats-Msg-Id.

    Several relays (replicas) may run: rows are claimed with FOR UPDATE SKIP LOCKED. A crash between publish
    and marking republishes the rows; JetStream's duplicate window drops the copies.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        js: JetStreamContext,
        *,
        batch_size: int = 500,
        poll_interval_s: float = 0.5,
        retention_s: float = 3600.0,
    ) -> None:
        self._engine = engine
        self._js = js
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        self._retention_s = retention_s
        self._wake = asyncio.Event()
        self._stopping = False
        self.published = 0

    def wake(self) -> None:
        """Tell the relay that new rows were committed, so it publishes without waiting for the poll."""
        self._wake.set()

    async def publish_pending(self) -> int:
        """Publish one batch of unpublished rows; return how many were published."""
        async with self._engine.begin() as connection:
            rows = (
                await connection.execute(
                    sa.select(
                        outbox_table.c.id,
                        outbox_table.c.subject,
                        outbox_table.c.payload,
                        outbox_table.c.headers,
                    )
                    .where(outbox_table.c.published_at.is_(None))
                    .order_by(outbox_table.c.id)
                    .limit(self._batch_size)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            if not rows:
                return 0
            futures = []
            for row in rows:
                headers = {str(k): str(v) for k, v in (row.headers or {}).items()}
                headers["Nats-Msg-Id"] = str(row.id)
                futures.append(await self._js.publish_async(row.subject, row.payload, headers=headers))
            await asyncio.gather(*futures)
            await connection.execute(
                outbox_table.update()
                .where(outbox_table.c.id.in_([row.id for row in rows]))
                .values(published_at=sa.func.now())
            )
        self.published += len(rows)
        return len(rows)

    async def purge_published(self) -> None:
        """Delete rows published longer ago than the retention."""
        async with self._engine.begin() as connection:
            await connection.execute(
                outbox_table.delete().where(
                    outbox_table.c.published_at
                    < sa.func.now() - sa.text(f"interval '{int(self._retention_s)} seconds'")
                )
            )

    async def run(self) -> None:
        """Publish until stopped; back off on errors (NATS or the database down) and keep going."""
        delay = self._poll_interval_s
        cycles = 0
        while not self._stopping:
            try:
                count = await self.publish_pending()
                delay = self._poll_interval_s
                cycles += 1
                if cycles % 1000 == 0:
                    await self.purge_published()
                if count == self._batch_size:
                    continue
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox relay failed; retrying in %.1fs", delay)
                delay = min(delay * 2, 10.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            self._wake.clear()

    async def drain(self) -> None:
        """Publish everything committed so far, then stop (used at shutdown)."""
        self._stopping = True
        self._wake.set()
        try:
            while await self.publish_pending():
                pass
        except Exception:
            log.exception("outbox relay could not drain; the rows stay and are published at next start")
