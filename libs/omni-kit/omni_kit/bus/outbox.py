"""Transactional outbox: events are rows written with the state change, published afterwards by the relay.

No event may stall the log. An envelope over the outbox's limit (max_envelope_bytes, below the NATS
server's max_payload) is refused when it is staged, so the request that made it fails with
INVALID_ARGUMENT and writes nothing. A row the relay still cannot publish is moved aside: a run of events
too large together for the server is split into several messages; a single event too large, or a message
JetStream refuses for good, goes to the outbox_dead_letters table with the reason (an ERROR log and the
omni.outbox.dead_lettered counter), and the rows behind it are published.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from google.protobuf.message import Message
from nats.aio.client import Client as NatsClient
from nats.errors import MaxPayloadError
from nats.js import JetStreamContext
from nats.js.errors import APIError, ServiceUnavailableError
from opentelemetry import metrics
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from omni.events.v1 import envelope_pb2
from omni_kit.bus.envelope import (
    BATCH_HEADER,
    DEFAULT_MAX_ENVELOPE_BYTES,
    EncodedEnvelope,
    check_envelope_size,
    make_envelope,
    pack_batch,
    serialised,
    subject_for,
    varint,
)
from omni_kit.bus.tables import outbox_dead_letters_table, outbox_table

log = logging.getLogger(__name__)
_DEAD_LETTERED = metrics.get_meter("omni_kit.bus").create_counter(
    "omni.outbox.dead_lettered",
    description="Events the outbox relay could not publish and moved to outbox_dead_letters.",
)

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
    max_envelope_bytes: int | None = None,
    fields: Sequence[str] | None = None,
) -> OutboxRows:
    """Group envelopes, in order, into outbox rows: consecutive events of one type share a row.

    One row per event would cost a row write, an update and a delete in PostgreSQL and a publish and an ack
    in the relay for every event; a batch of a thousand tracked events costs one of each.

    With max_envelope_bytes, an envelope larger raises EnvelopeTooLarge naming its field: fields[i] for the
    i-th envelope (the request field it came from), else "event".
    """
    runs: list[tuple[envelope_pb2.Envelope | EncodedEnvelope, list[bytes], str | None]] = []
    run: list[bytes] = []
    size = 0
    for index, envelope in enumerate(envelopes):
        if max_envelope_bytes is None:
            data = serialised(envelope)
        else:
            field_path = fields[index] if fields is not None and index < len(fields) else "event"
            data = check_envelope_size(envelope, max_envelope_bytes, field_path)
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

    def __init__(
        self, producer: str, namespace: str = "omni", *, max_envelope_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES
    ) -> None:
        self.producer = producer
        self.namespace = namespace
        self.max_envelope_bytes = max_envelope_bytes
        """The largest envelope staged; a larger one is refused (EnvelopeTooLarge, INVALID_ARGUMENT)."""

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
        field: str = "event",
    ) -> envelope_pb2.Envelope:
        """Stage one event in the session's transaction; it is published only if the transaction commits.

        Raises EnvelopeTooLarge, naming `field` (the request field the event carries), when the envelope is
        over max_envelope_bytes; nothing is staged then.
        """
        envelope = self.envelope(payload, event_type=event_type, person_id=person_id, occurred_at=occurred_at)
        await self.add_envelopes(session, [envelope], fields=[field])
        return envelope

    def rows(
        self,
        envelopes: Sequence[envelope_pb2.Envelope | EncodedEnvelope],
        fields: Sequence[str] | None = None,
    ) -> OutboxRows:
        """The envelopes as outbox rows of this producer's namespace (see outbox_rows); raises
        EnvelopeTooLarge for one over max_envelope_bytes, naming fields[i] (default "event")."""
        return outbox_rows(
            envelopes, self.namespace, max_envelope_bytes=self.max_envelope_bytes, fields=fields
        )

    def fits(self, envelope: envelope_pb2.Envelope | EncodedEnvelope) -> bool:
        """Whether the envelope is small enough to stage (for producers that refuse one event of many)."""
        return len(serialised(envelope)) <= self.max_envelope_bytes

    async def add_envelopes(
        self,
        session: AsyncSession,
        envelopes: Sequence[envelope_pb2.Envelope | EncodedEnvelope],
        fields: Sequence[str] | None = None,
    ) -> None:
        """Stage many events at once (one multi-row insert; consecutive events of one type share a row).

        Raises EnvelopeTooLarge for an envelope over max_envelope_bytes, naming fields[i] for the i-th (the
        request field it came from; default "event"), before anything is written.
        """
        if not envelopes:
            return
        rows = self.rows(envelopes, fields)
        mark_outbox_staged(session)
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
_REMOVE = sa.text("DELETE FROM outbox WHERE id = ANY(CAST(:ids AS uuid[]))")

HEADER_ALLOWANCE = 4096
"""Bytes of a message's limit kept for its headers (trace context, message id, batch count) when the
largest envelope to stage is derived from the server's max_payload."""

DEFAULT_ACK_TIMEOUT_S = 10.0
"""How long the relay waits by default for JetStream's acknowledgements of a round before it publishes the messages
still unacknowledged again, one at a time."""


def headers_size(headers: dict[str, str]) -> int:
    """The bytes NATS headers take on the wire ("NATS/1.0" line, one line per header, blank line): the
    server counts them with the payload against its max_payload."""
    size = 12
    for key, value in headers.items():
        size += (len(key) if key.isascii() else len(key.encode())) + 4
        size += len(value) if value.isascii() else len(value.encode())
    return size


def split_batch(data: bytes) -> list[bytes]:
    """The serialised envelopes of an EnvelopeBatch, as written by pack_batch, without parsing them."""
    envelopes = []
    position = 0
    while position < len(data):
        tag, position = _read_varint(data, position)
        if tag != 0x0A:
            # Not what pack_batch writes: parse it properly.
            return [e.SerializeToString() for e in envelope_pb2.EnvelopeBatch.FromString(data).envelopes]
        length, position = _read_varint(data, position)
        envelopes.append(data[position : position + length])
        position += length
    return envelopes


def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


@dataclass(slots=True)
class _Outgoing:
    """One message the relay publishes for a row: the row's whole payload, or a part of a split batch."""

    message_id: str
    data: bytes
    headers: dict[str, str]


@dataclass
class _DeadLetter:
    """Something the relay moves aside instead of publishing."""

    id: str
    data: bytes
    headers: dict[str, str]
    error: str


def _permanent(error: BaseException) -> bool:
    """Whether a publish failed for good (the message is refused as it is) rather than for now."""
    if isinstance(error, MaxPayloadError):
        return True
    # 400: the request is bad (e.g. the stream's message size limit); 413: too large. 503 and timeouts pass.
    return (
        isinstance(error, APIError)
        and not isinstance(error, ServiceUnavailableError)
        and error.code in (400, 413)
    )


class OutboxRelay:
    """Publishes committed outbox rows to JetStream, oldest first, with the row's id as Nats-Msg-Id.

    A published row is marked and its payload emptied in the same transaction: the event, personal data
    included, is then kept by JetStream only, and the row (id, subject, type, person id, times) for
    `retention_s` as a record of what was published when. Several relays (replicas) may run: rows are
    claimed with FOR UPDATE SKIP LOCKED. A crash between publish and marking republishes the rows;
    JetStream's duplicate window drops the copies.

    Rows never block one another: a row larger than the server takes (its max_payload, read from the
    connection's server info at each round, headers included) is split into several messages when it holds
    a batch, each part under its first event's id; an event that alone is too large, or a message JetStream
    refuses for good, is moved to outbox_dead_letters with the reason. Transient failures (NATS down, no
    acknowledgement) roll the round back and it is tried again.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        js: JetStreamContext,
        *,
        batch_size: int = 200,
        poll_interval_s: float = 0.5,
        retention_s: float = 3600.0,
        client: NatsClient | None = None,
        ack_timeout_s: float = DEFAULT_ACK_TIMEOUT_S,
    ) -> None:
        self._engine = engine
        self._ack_timeout_s = ack_timeout_s
        self._js = js
        # The connection whose server info holds max_payload; the JetStream context keeps it too.
        self._client: NatsClient | None = client if client is not None else getattr(js, "_nc", None)
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        self._retention_s = retention_s
        self._wake = asyncio.Event()
        self._stopping = False
        self.published = 0
        self.dead_lettered = 0

    def wake(self) -> None:
        """Tell the relay that new rows were committed, so it publishes without waiting for the poll."""
        self._wake.set()

    def max_message_bytes(self) -> int:
        """The largest message (payload and headers) the connected server accepts."""
        if self._client is None:
            return 1024 * 1024
        return int(self._client.max_payload)

    async def publish_pending(self) -> int:
        """Publish one batch of unpublished rows, mark them and empty their payloads; return how many rows
        were done (published, split, or moved aside)."""
        async with self._engine.begin() as connection:
            rows: list[Any] = list(
                (
                    await connection.execute(
                        sa.select(
                            outbox_table.c.id,
                            outbox_table.c.subject,
                            outbox_table.c.type,
                            outbox_table.c.person_id,
                            outbox_table.c.payload,
                            outbox_table.c.headers,
                            outbox_table.c.created_at,
                        )
                        .where(outbox_table.c.published_at.is_(None))
                        .order_by(outbox_table.c.id)
                        .limit(self._batch_size)
                        .with_for_update(skip_locked=True)
                    )
                ).all()
            )
            if not rows:
                return 0
            limit = self.max_message_bytes()
            plans: list[tuple[Any, list[_Outgoing], list[_DeadLetter]]] = []
            sent: list[tuple[str, _Outgoing, asyncio.Future[Any]]] = []
            owners: list[int] = []
            for index, row in enumerate(rows):
                outgoing, dead = self._plan(row, limit)
                plans.append((row, outgoing, dead))
                for message in outgoing:
                    try:
                        future = await self._js.publish_async(
                            row.subject, message.data, headers=message.headers
                        )
                    except MaxPayloadError as error:  # refused by the client itself
                        future = asyncio.get_running_loop().create_future()
                        future.set_exception(error)
                    sent.append((row.subject, message, future))
                    owners.append(index)
            results = await self._acknowledgements(sent)
            published_by_row: dict[int, int] = {}
            for index, (_, message, _), result in zip(owners, sent, results, strict=True):
                if not isinstance(result, BaseException):
                    published_by_row[index] = published_by_row.get(index, 0) + 1
                elif _permanent(result):
                    plans[index][2].append(
                        _DeadLetter(
                            message.message_id,
                            message.data,
                            _without_id(message.headers),
                            str(result) or repr(result),
                        )
                    )
                else:
                    # Nothing is marked; the messages that went through are dropped as duplicates next time.
                    raise result
            published = [row.id for index, (row, _, _) in enumerate(plans) if published_by_row.get(index)]
            moved = [row.id for index, (row, _, _) in enumerate(plans) if not published_by_row.get(index)]
            # One array parameter, not an IN list: a list is a new statement (compiled, prepared and planned)
            # for every count of rows.
            if published:
                await connection.execute(_MARK_PUBLISHED, {"ids": published})
            if moved:
                await connection.execute(_REMOVE, {"ids": moved})
            dead_letters = [(row, dead) for row, _, deads in plans for dead in deads]
            if dead_letters:
                await self._move_aside(connection, dead_letters)
        self.published += len(published)
        return len(rows)

    async def _acknowledgements(self, sent: list[tuple[str, _Outgoing, asyncio.Future[Any]]]) -> list[Any]:
        """Each message's acknowledgement, or the exception it failed with.

        A message whose acknowledgement does not come in time is published again on its own, with a request
        that waits for the answer (JetStream drops the copy if the first got through): nats-py's
        asynchronous publish never completes the future of a message JetStream refuses (its error handler
        raises instead of setting the exception), and an acknowledgement lost in a reconnect would hold the
        round for ever.
        """
        try:
            return await asyncio.wait_for(
                asyncio.gather(*(future for _, _, future in sent), return_exceptions=True),
                timeout=self._ack_timeout_s,
            )
        except TimeoutError:
            pass  # the futures not done are cancelled, which frees their slots among the pending publishes
        results: list[Any] = []
        for subject, message, future in sent:
            if future.done() and not future.cancelled():
                results.append(future.exception() or future.result())
                continue
            try:
                results.append(
                    await self._js.publish(
                        subject, message.data, timeout=self._ack_timeout_s, headers=message.headers
                    )
                )
            except (MaxPayloadError, APIError) as error:
                results.append(error)
            # Anything else (a timeout, NATS unreachable) ends the round: it is rolled back and tried again.
        return results

    def _plan(self, row: Any, limit: int) -> tuple[list[_Outgoing], list[_DeadLetter]]:
        """The messages a row is published as, and what of it cannot be published at all."""
        row_id = str(row.id)
        whole = {str(k): str(v) for k, v in (row.headers or {}).items()}
        whole["Nats-Msg-Id"] = row_id
        if len(row.payload) + headers_size(whole) <= limit:
            return [_Outgoing(row_id, row.payload, whole)], []
        headers = _without_id(whole)
        base = {k: v for k, v in headers.items() if k != BATCH_HEADER}
        too_large = f"{{size}} bytes with headers, over the server's max_payload of {limit}"
        if BATCH_HEADER not in headers:
            size = len(row.payload) + headers_size(whole)
            return [], [_DeadLetter(row_id, row.payload, base, too_large.format(size=size))]
        # A run of events too large together: as many messages as it takes, each under its first event's id
        # (the first under the row's), so a republished part is deduplicated like a whole row.
        outgoing: list[_Outgoing] = []
        dead: list[_DeadLetter] = []
        part: list[tuple[str, bytes]] = []
        body = 0
        for data in split_batch(row.payload):
            event_id = envelope_pb2.Envelope.FromString(data).id
            alone = len(data) + headers_size({**base, "Nats-Msg-Id": event_id})
            if alone > limit:
                dead.append(_DeadLetter(event_id, data, base, too_large.format(size=alone)))
                continue
            field_size = len(data) + 1 + len(varint(len(data)))
            batch_headers = {**base, "Nats-Msg-Id": (part[0][0] if part else event_id), BATCH_HEADER: "9999"}
            if part and body + field_size + headers_size(batch_headers) > limit:
                outgoing.append(_part(part, base))
                part, body = [], 0
            part.append((event_id, data))
            body += field_size
        if part:
            outgoing.append(_part(part, base))
        return outgoing, dead

    async def _move_aside(
        self, connection: AsyncConnection, dead_letters: list[tuple[Any, _DeadLetter]]
    ) -> None:
        """Write what cannot be published to outbox_dead_letters, each with its reason, and say so loudly."""
        statement = insert(outbox_dead_letters_table).on_conflict_do_nothing()
        await connection.execute(
            statement,
            [
                {
                    "id": uuid.UUID(dead.id),
                    "subject": row.subject,
                    "type": row.type,
                    "person_id": row.person_id,
                    "payload": dead.data,
                    "headers": dead.headers,
                    "error": dead.error,
                    "created_at": row.created_at,
                }
                for row, dead in dead_letters
            ],
        )
        for row, dead in dead_letters:
            log.error(
                "outbox: event %s (%s, %d bytes) cannot be published and was moved to outbox_dead_letters: %s",
                dead.id,
                row.type,
                len(dead.data),
                dead.error,
            )
        self.dead_lettered += len(dead_letters)
        _DEAD_LETTERED.add(len(dead_letters))

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


def _without_id(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k != "Nats-Msg-Id"}


def _part(part: list[tuple[str, bytes]], base: dict[str, str]) -> _Outgoing:
    first_id = part[0][0]
    if len(part) == 1:
        return _Outgoing(first_id, part[0][1], {**base, "Nats-Msg-Id": first_id})
    headers = {**base, "Nats-Msg-Id": first_id, BATCH_HEADER: str(len(part))}
    return _Outgoing(first_id, pack_batch([data for _, data in part]), headers)
