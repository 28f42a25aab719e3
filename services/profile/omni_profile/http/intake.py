"""Intake of many events where one bad event does not stop the others: the HTTP endpoint and the event stream.

Both go through the one ingestion pipeline (ingestion.Ingestion: recorded → resolve → record), which
already keeps the good events of a batch and answers the bad ones rejected. On top of it, this module
slices what arrives into batches of at most 1000, sets the traits of identify calls in the same transaction
as their events (a refused trait sets its event aside and the rest are written again, so a refused event
leaves nothing behind), and keeps the count of what happened.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from omni.profile.v1 import profile_pb2
from omni_kit.errors import FieldViolation, InvalidArgument
from omni_profile import validation, wire
from omni_profile.domain import BAD_EVENT, Event, TrackResult
from omni_profile.ingestion import Ingestion
from omni_profile.traits import Traits, TraitsRefused

MAX_SLICE = validation.MAX_BATCH
"""Events per identity call and per transaction."""
MAX_REPORTED = 1000
"""Refused events reported one by one; more are only counted."""


@dataclass
class Pending:
    """A checked event waiting to be recorded, at its position in the request or stream."""

    position: int
    event: Event
    traits: dict[str, Any] = field(default_factory=dict)
    """Traits to set on the event's person once the event is recorded (identify calls)."""


@dataclass(frozen=True)
class Rejection:
    """An event that was not recorded, and why; field paths are relative to the event."""

    position: int
    event_id: str
    message: str
    violations: tuple[FieldViolation, ...] = ()
    reason: str = BAD_EVENT
    """Why, as TrackEvent's ErrorInfo reason for the event alone (domain.TrackResult.reason)."""


@dataclass
class Outcome:
    """What happened to the events of a request or stream."""

    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    """The first MAX_REPORTED rejections, in the order they were found."""

    def reject(self, rejection: Rejection) -> None:
        """Count a refused event and keep its reasons while there is room."""
        self.rejected += 1
        if len(self.rejections) < MAX_REPORTED:
            self.rejections.append(rejection)


class Intake:
    """Records checked events through Ingestion, keeping the good ones when some are refused."""

    def __init__(self, ingestion: Ingestion, traits: Traits) -> None:
        self._ingestion = ingestion
        self._traits = traits

    async def ingest(self, pending: Sequence[Pending], outcome: Outcome) -> None:
        """Record checked events in slices, adding what happened to each to outcome."""
        for start in range(0, len(pending), MAX_SLICE):
            await self._ingest_slice(list(pending[start : start + MAX_SLICE]), outcome)

    async def _ingest_slice(self, remaining: list[Pending], outcome: Outcome) -> None:
        # Each round either records the slice or sets one event aside, so it ends.
        while remaining:
            try:
                events = [p.event for p in remaining]
                results = await self._ingestion.ingest(
                    events, alongside=self._traits.with_events(events, [p.traits for p in remaining])
                )
            except TraitsRefused as refused:
                bad = remaining.pop(refused.index)
                violations = tuple(
                    FieldViolation(v.field or "traits", v.description) for v in refused.error.violations
                )
                outcome.reject(Rejection(bad.position, bad.event.id, refused.error.message, violations))
                continue
            except InvalidArgument as refused:
                # Identity refused the batch without naming an event: none of them can be recorded.
                for item in remaining:
                    outcome.reject(Rejection(item.position, item.event.id, refused.message))
                return
            for item, result in zip(remaining, results, strict=True):
                if result.refused:
                    outcome.reject(
                        Rejection(
                            item.position, item.event.id, _summary(result), result.violations, result.reason
                        )
                    )
                elif result.duplicate:
                    outcome.duplicates += 1
                else:
                    outcome.accepted += 1
            return


def _summary(result: TrackResult) -> str:
    return "; ".join(f"{v.field}: {v.description}" if v.field else v.description for v in result.violations)


def check_event(message: profile_pb2.Event, position: int, now: datetime) -> Pending | Rejection:
    """A protobuf event checked by the rules of TrackEvent, as a pending event or a rejection."""
    violations = validation.event_violations(message, now=now)
    if violations:
        return Rejection(position, message.id, "the event is invalid", tuple(violations))
    traits = wire.struct_to_dict(message.traits) if message.HasField("traits") else {}
    return Pending(position, wire.event_from_proto(message, received_at=now), traits)


class _Inbox:
    """Events read from a stream and not yet taken, at most `limit` (plus the last message read)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._events: list[tuple[int, profile_pb2.Event]] = []
        self._closed = False
        self._changed = asyncio.Condition()

    async def put(self, events: Iterable[tuple[int, profile_pb2.Event]]) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: len(self._events) < self._limit)
            self._events.extend(events)
            self._changed.notify_all()

    async def close(self) -> None:
        async with self._changed:
            self._closed = True
            self._changed.notify_all()

    async def take(self) -> list[tuple[int, profile_pb2.Event]] | None:
        """Everything waiting, once there is something; None when the stream has ended."""
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self._events) or self._closed)
            taken, self._events = self._events, []
            self._changed.notify_all()
        return taken or None


async def consume_stream(chunks: AsyncIterator[Sequence[profile_pb2.Event]], intake: Intake) -> Outcome:
    """Record a stream of event chunks as they arrive; positions count events from the stream's start.

    A reader takes messages off the stream while the events before them are recorded, but stops while
    MAX_SLICE events wait, so memory stays bounded and a fast producer is slowed by flow control. Whatever
    has arrived is recorded together (up to MAX_SLICE per transaction), so a trickle is recorded at once
    and a flood in large transactions.
    """
    inbox = _Inbox(MAX_SLICE)

    async def read() -> None:
        position = 0
        try:
            async for events in chunks:
                numbered = list(enumerate(events, start=position))
                position += len(numbered)
                if numbered:
                    await inbox.put(numbered)
        finally:
            await inbox.close()

    reader = asyncio.create_task(read(), name="stream-track-events-reader")
    outcome = Outcome()
    try:
        while (taken := await inbox.take()) is not None:
            now = datetime.now(UTC)
            pending: list[Pending] = []
            for position, message in taken:
                checked = check_event(message, position, now)
                if isinstance(checked, Rejection):
                    outcome.reject(checked)
                else:
                    pending.append(checked)
            await intake.ingest(pending, outcome)
        await reader  # a broken stream raises here
        outcome.rejections.sort(key=lambda r: r.position)
    finally:
        if not reader.done():
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
    return outcome
