"""Transactional outbox: events are rows written with the state change, published afterwards by the relay."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from google.protobuf.message import Message
from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from omni.events.v1 import envelope_pb2
from omni_kit.bus.envelope import (
    BATCH_HEADER,
    EncodedEnvelope,
    make_envelope,
    pack_batch,
    serialised,
    subject_for,
)
from omni_kit.bus.tables import outbox_table

log = logging.getLogger(__name__)

_STAGED = "omni_outbox_staged"

MAX_BATCH_EVENTS = 1000
"""The most events one outbox row (one published message) holds."""
MAX_BATCH_BYTES = 512 * 1024
"""The most envelope bytes one outbox row holds: well under NATS's default 1 MiB message limit."""


@dataclass
class OutboxRows:
    """Outbox rows as one list per column, ready for a multi-row insert over arrays.

    A row is one published message: a single envelope, or a run of consecutive events of one type staged
    together, as an EnvelopeBatch with the batch header. Runs keep the order of the events; the row's id is
    its first event's id, so rows sort as their events do and a row of one event is published under the
    event's own id.
    """

    ids: list[uuid.UUID] = field(default_factory=list)
    subjects: list[str] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    person_ids: list[str | None] = field(default_factory=list)
    """The events' person when they all concern one, else None."""
    payloads: list[bytes] = field(default_factory=list)
    headers: list[str] = field(default_factory=list)
    """JSON objects: the first event's trace context, and the batch header on batches."""

    def __len__(self) -> int:
        return len(self.ids)

    def columns(
        self,
    ) -> tuple[list[uuid.UUID], list[str], list[str], list[str | None], list[bytes], list[str]]:
        """The columns in the order id, subject, type, person_id, payload, headers."""
        return self.ids, self.subjects, self.types, self.person_ids, self.payloads, self.headers


def outbox_rows(
    envelopes: Sequence[envelope_pb2.Envelope | EncodedEnvelope],
    namespace: str,
    *,
    max_events: int = MAX_BATCH_EVENTS,
    max_bytes: int = MAX_BATCH_BYTES,
) -> OutboxRows:
    """Group envelopes, in order, into outbox rows: consecutive events of one type share a row.

    One row per event would cost a row write, an update and a delete in PostgreSQL and a publish and an ack
    in the relay for every event; a batch of a thousand tracked events costs one of each.
    """
    runs: list[tuple[envelope_pb2.Envelope | EncodedEnvelope, list[bytes], str | None]] = []
    run: list[bytes] = []
    size = 0
    for envelope in envelopes:
        data = serialised(envelope)
        if run and (
            envelope.type == runs[-1][0].type and len(run) < max_events and size + len(data) <= max_bytes
        ):
            if runs[-1][2] != envelope.person_id:
                runs[-1] = (runs[-1][0], run, None)
        else:
            run, size = [], 0
            runs.append((envelope, run, envelope.person_id or None))
        run.append(data)
        size += len(data) + 5  # the tag and length of the field in the batch

    rows = OutboxRows()
    for first, serialized, person in runs:
        headers = dict(first.trace_context)
        if len(serialized) > 1:
            headers[BATCH_HEADER] = str(len(serialized))
        rows.ids.append(uuid.UUID(first.id))
        rows.subjects.append(subject_for(first.type, namespace))
        rows.types.append(first.type)
        rows.person_ids.append(person)
        rows.payloads.append(serialized[0] if len(serialized) == 1 else pack_batch(serialized))
        rows.headers.append(json.dumps(headers))
    return rows


def mark_outbox_staged(session: AsyncSession) -> None:
    """Note that the session's transaction staged events (written other than through Outbox.add_envelopes,
    e.g. as rows of a bulk statement), so that the relay is woken when it commits."""
    session.info[_STAGED] = True


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

    def rows(self, envelopes: Sequence[envelope_pb2.Envelope | EncodedEnvelope]) -> OutboxRows:
        """The envelopes as outbox rows of this producer's namespace (see outbox_rows)."""
        return outbox_rows(envelopes, self.namespace)

    async def add_envelopes(
        self, session: AsyncSession, envelopes: Sequence[envelope_pb2.Envelope | EncodedEnvelope]
    ) -> None:
        """Stage many events at once (one multi-row insert; consecutive events of one type share a row)."""
        if not envelopes:
            return
        mark_outbox_staged(session)
        rows = self.rows(envelopes)
        # One statement over arrays, however many rows: a list of parameter sets would be one round trip
        # and one bind-processing pass per row.
        await session.execute(
            _INSERT_MANY,
            {
                "ids": rows.ids,
                "subjects": rows.subjects,
                "types": rows.types,
                "persons": rows.person_ids,
                "payloads": rows.payloads,
                "headers": rows.headers,
            },
        )


_INSERT_MANY = sa.text(
    "INSERT INTO outbox (id, subject, type, person_id, payload, headers) "
    "SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:subjects AS text[]), CAST(:types AS text[]), "
    "CAST(:persons AS text[]), CAST(:payloads AS bytea[]), CAST(:headers AS jsonb[]))"
)


_MARK_PUBLISHED = sa.text(
    "UPDATE outbox SET published_at = now(), payload = ''::bytea WHERE id = ANY(CAST(:ids AS uuid[]))"
)


class OutboxRelay:
    """Publishes committed outbox rows to JetStream, oldest first, with the row's id as Nats-Msg-Id.

    A published row is marked and its payload emptied in the same transaction: the event, personal data
    included, is then kept by JetStream only, and the row (id, subject, type, person id, times) for
    `retention_s` as a record of what was published when. Several relays (replicas) may run: rows are
    claimed with FOR UPDATE SKIP LOCKED. A crash between publish and marking republishes the rows;
    JetStream's duplicate window drops the copies.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        js: JetStreamContext,
        *,
        batch_size: int = 200,
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
        """Publish one batch of unpublished rows, mark them and empty their payloads; return how many were
        published."""
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
            # One array parameter, not an IN list: a list is a new statement (compiled, prepared and planned)
            # for every count of rows.
            await connection.execute(_MARK_PUBLISHED, {"ids": [row.id for row in rows]})
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
