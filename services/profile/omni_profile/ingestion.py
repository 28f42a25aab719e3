"""The one way events come in, whatever the transport (gRPC unary and stream, the Segment-compatible HTTP
endpoint): `Ingestion.ingest(events)` takes checked domain events and answers one TrackResult per event.

It runs in two steps so that no database transaction stays open across the call to identity: resolve the
events through identity in one BatchResolvePersons call (identity names the identifier sets it refuses in
its answer and resolves the others in the same call: the refused sets reject their events; identifiers of an
erased person reject theirs), checking
that the persons events name exist (profile's rows, else identity); record everything in one transaction
(tracking.Tracker), where a (source, id) recorded before is found by the insert and answered duplicate, or
id reused when its content differs. Refused events are answered with their reason and field violations,
paths relative to the event; the good events of a batch are recorded regardless.

This module owns its transactions (unlike domain modules) because three transports share it; it takes the
transaction factory from main.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from omni_kit.db import retry_transaction
from omni_kit.errors import Aborted
from omni_profile import repository
from omni_profile.domain import Event, TrackResult
from omni_profile.tracking import PersonsMoved, Tracker

Transaction = Callable[[], AbstractAsyncContextManager[AsyncSession]]
"""Opens a session in a transaction, committed when the block ends (Runtime.transaction)."""

_ATTEMPTS = 5
"""Runs of a batch's transaction before it is refused (ABORTED)."""


Alongside = Callable[[AsyncSession, Sequence[tuple[int, TrackResult]]], Awaitable[None]]
"""Writes what belongs with the recorded events, in their transaction; gets (index in the batch, result)."""


class Ingestion:
    """Resolves, records and announces batches of events."""

    def __init__(self, transaction: Transaction, tracker: Tracker) -> None:
        self._transaction = transaction
        self._tracker = tracker

    async def ingest(
        self, events: Sequence[Event], *, alongside: Alongside | None = None
    ) -> list[TrackResult]:
        """Record checked events; one result per event, in order (recorded, duplicate or rejected).

        Events are changed in place: person_id is set on the ones resolved. Raises Unavailable when identity
        cannot be reached (nothing is written then). `alongside` runs in the recording transaction (the
        traits of the Segment endpoint's identify calls); if it raises, nothing of the batch is written.
        """
        if not events:
            return []
        # Keys recorded before are found by the insert itself (and answered duplicate, with the person they
        # were recorded for): reading them first would cost a round trip on every batch to save identity
        # the work of resolving a retry's identifiers again, which it does idempotently.
        recorded: dict[tuple[str, str], uuid.UUID] = {}
        named = {e.person_id for e in events if e.person_id is not None}
        held: set[uuid.UUID] = set()
        if named:
            # Only the persons profile holds no row for are asked about (to identity): nearly none.
            async with self._transaction() as session:
                held = await repository.held_persons(session, named)
        refused = await self._tracker.resolve_each(events, recorded, held)
        good = [i for i in range(len(events)) if i not in refused]
        recorded_results: list[TrackResult] = []
        if good:
            recorded_results = await self._record([events[i] for i in good], good, recorded, alongside)
        answers = iter(recorded_results)
        return [refused[index] if index in refused else next(answers) for index in range(len(events))]

    async def _record(
        self,
        batch: list[Event],
        positions: list[int],
        recorded: dict[tuple[str, str], uuid.UUID],
        alongside: Alongside | None,
    ) -> list[TrackResult]:
        """Record in one transaction, again when PostgreSQL broke a deadlock by failing this one.

        Batches lock their persons and the survivors they lead to in id order, but a merge committed in
        between leads to a survivor locked in a second statement; two batches can then wait on each other
        and PostgreSQL fails one of them. A merge or erasure can also move a person between reading where
        its events go and locking it (PersonsMoved). Nothing of a failed attempt was written, so it is run
        again (omni_kit.db.retry_transaction).
        """

        async def attempt() -> list[TrackResult]:
            async with self._transaction() as session:
                results = await self._tracker.record(session, batch, recorded)
                if alongside is not None:
                    await alongside(session, list(zip(positions, results, strict=True)))
            return results

        def exhausted(error: Exception) -> Exception:
            cause = error.orig if isinstance(error, DBAPIError) else error
            return Aborted(
                message=f"recording the batch conflicted with concurrent writes {_ATTEMPTS} times ({cause}); "
                "nothing of it was written, send it again"
            )

        return await retry_transaction(
            attempt,
            name="recording a batch",
            attempts=_ATTEMPTS,
            conflicts=(PersonsMoved,),
            exhausted=exhausted,
        )
