"""Intake of many events where one bad event does not stop the others: the HTTP endpoint and the event stream.

BatchTrackEvents is all or nothing. The Segment-compatible endpoint and StreamTrackEvents instead keep the
good events of a batch and report the bad ones, as analytics libraries and high-volume producers expect.
Both go through the tracking pipeline of BatchTrackEvents (Tracker.recorded → resolve → record) in slices
of at most 1000 events; an event identity refuses, or whose traits the profile refuses, is set aside and
the rest of its slice is run again, so a refused event leaves nothing behind and a kept one is written
whole (event, traits, cart and announcements in one transaction).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from omni.profile.v1 import profile_pb2
from omni_kit.errors import FieldViolation, InvalidArgument, Violations
from omni_kit.runtime import Runtime
from omni_profile import validation, wire
from omni_profile.domain import Event, TrackResult
from omni_profile.profiles import Profiles
from omni_profile.tracking import Tracker

MAX_SLICE = validation.MAX_BATCH
"""Events per identity call and per transaction."""
MAX_REPORTED = 1000
"""Refused events reported one by one; more are only counted."""

_EVENT_PATH = re.compile(r"^events\[(\d+)\](?:\.(.*))?$")


@dataclass
class Pending:
    """A checked event waiting to be recorded, at its position in the request or stream."""

    position: int
    event: Event
    traits: dict[str, Any] = field(default_factory=dict)
    """Traits to set on the event's person once the event is recorded (identify calls)."""
    traits_source: str = ""


@dataclass(frozen=True)
class Rejection:
    """An event that was not recorded, and why; field paths are relative to the event."""

    position: int
    event_id: str
    message: str
    violations: tuple[FieldViolation, ...] = ()


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


class _TraitsRefused(Exception):
    def __init__(self, index: int, error: InvalidArgument) -> None:
        super().__init__(error.message)
        self.index = index
        self.error = error


class Intake:
    """Records events through the tracking pipeline, keeping the good ones when some are refused."""

    def __init__(self, runtime: Runtime, tracker: Tracker, profiles: Profiles) -> None:
        self._runtime = runtime
        self._tracker = tracker
        self._profiles = profiles

    async def ingest(self, pending: Sequence[Pending], outcome: Outcome) -> None:
        """Record checked events in slices, adding what happened to each to outcome."""
        for start in range(0, len(pending), MAX_SLICE):
            await self._ingest_slice(list(pending[start : start + MAX_SLICE]), outcome)

    async def _ingest_slice(self, remaining: list[Pending], outcome: Outcome) -> None:
        # Each round either records the slice or sets at least one event aside, so it ends.
        while remaining:
            batch = [p.event for p in remaining]
            async with self._runtime.transaction() as session:
                recorded = await self._tracker.recorded(session, batch)
            try:
                await self._tracker.resolve(
                    batch, [f"events[{i}]" for i in range(len(batch))], recorded, container="events"
                )
            except InvalidArgument as refused:
                remaining = _set_aside(remaining, refused, outcome)
                continue
            try:
                results = await self._record(remaining, recorded)
            except _TraitsRefused as refused:
                bad = remaining.pop(refused.index)
                violations = tuple(
                    FieldViolation(v.field or "traits", v.description) for v in refused.error.violations
                )
                outcome.reject(Rejection(bad.position, bad.event.id, refused.error.message, violations))
                continue
            for result in results:
                if result.duplicate:
                    outcome.duplicates += 1
                else:
                    outcome.accepted += 1
            return

    async def _record(
        self, remaining: Sequence[Pending], recorded: Mapping[str, uuid.UUID]
    ) -> list[TrackResult]:
        """Record a resolved slice and set the traits of its new identify events; one transaction."""
        now = datetime.now(UTC)
        async with self._runtime.transaction() as session:
            results = await self._tracker.record(session, [p.event for p in remaining], recorded)
            for index, (item, result) in enumerate(zip(remaining, results, strict=True)):
                # A repeated message changed nothing the first time round; its traits are not set again.
                if item.traits and not result.duplicate:
                    try:
                        await self._profiles.set_traits(
                            session, result.person_id, item.traits, item.traits_source, now
                        )
                    except InvalidArgument as error:
                        raise _TraitsRefused(index, error) from error
        return results


def _set_aside(remaining: list[Pending], refused: InvalidArgument, outcome: Outcome) -> list[Pending]:
    """Reject the events identity's refusal names and return the others; all of them if it names none."""
    by_index: dict[int, list[FieldViolation]] = {}
    for violation in refused.violations:
        match = _EVENT_PATH.match(violation.field)
        if match is not None and int(match.group(1)) < len(remaining):
            by_index.setdefault(int(match.group(1)), []).append(
                FieldViolation(match.group(2) or "", violation.description)
            )
    if not by_index:
        by_index = {i: [FieldViolation("", refused.message)] for i in range(len(remaining))}
    for index in sorted(by_index):
        item = remaining[index]
        outcome.reject(Rejection(item.position, item.event.id, refused.message, tuple(by_index[index])))
    return [item for i, item in enumerate(remaining) if i not in by_index]


def check_event(message: profile_pb2.Event, position: int, now: datetime) -> Pending | Rejection:
    """A protobuf event checked by the rules of TrackEvent, as a pending event or a rejection."""
    violations = Violations()
    validation.validate_event(message, "event", violations, now=now)
    if violations:
        relative = tuple(
            FieldViolation(v.field.removeprefix("event").removeprefix("."), v.description)
            for v in violations.items
        )
        return Rejection(position, message.id, "the event is invalid", relative)
    return Pending(position, wire.event_from_proto(message, received_at=now))


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
