"""Setting traits: per-source precedence, a history of every change, and the announcement."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from omni_kit.bus import Outbox
from omni_kit.errors import InvalidArgument
from omni_kit.ids import new_id
from omni_profile import events, persons, repository
from omni_profile.domain import DEFAULT_SOURCE, Event, TrackResult, Trait, TraitChange
from omni_profile.precedence import SourcePolicy


class TraitsRefused(Exception):
    """The traits carried by the event at `index` of a batch cannot be set; nothing of the batch is written."""

    def __init__(self, index: int, error: InvalidArgument) -> None:
        super().__init__(error.message)
        self.index = index
        self.error = error


class Traits:
    """Changes the traits of profiles; the caller owns the transaction."""

    def __init__(self, outbox: Outbox, policy: SourcePolicy) -> None:
        self._outbox = outbox
        self.policy = policy

    async def set_traits(
        self,
        session: AsyncSession,
        person_id: uuid.UUID,
        values: Mapping[str, Any],
        source: str,
        now: datetime,
        *,
        at: datetime | None = None,
    ) -> tuple[uuid.UUID, list[str]]:
        """Set traits (None removes one) as far as the source's precedence allows; record and announce changes.

        `at` is when the values were true (an identify call's time; `now` when not given): a trait keeps
        the time of the value it holds, and precedence compares it with the time of the write (see
        SourcePolicy), so a late write ends where it would have in order. The history records changes when
        they are made (`now`). Returns the live person written to and the names left unchanged because of
        precedence. Writing a trait's value again changes only who owns it and since when (not recorded in
        the history, not announced: the value did not change).
        """
        source = source or DEFAULT_SOURCE
        at = now if at is None else min(at, now)
        current = await persons.lock_live(session, person_id)
        existing = (await repository.load_traits(session, [current]))[current]
        upserts: list[Trait] = []
        deletes: list[str] = []
        ignored: list[str] = []
        history: list[TraitChange] = []
        for name, value in values.items():
            before = existing.get(name)
            if before is not None and not self.policy.may_overwrite(before, source, at):
                if before.value != value:
                    ignored.append(name)
                continue
            if value is None:
                if before is not None:
                    deletes.append(name)
                    history.append(TraitChange(new_id(), current, name, before.value, None, source, now))
            elif before is None or before.value != value:
                upserts.append(Trait(name, value, source, at))
                history.append(
                    TraitChange(
                        new_id(), current, name, None if before is None else before.value, value, source, now
                    )
                )
            elif before.source != source or before.updated_at != at:
                upserts.append(Trait(name, value, source, at))
        await repository.write_traits(session, current, upserts, deletes)
        await repository.record_trait_changes(session, history)
        if history:
            after = {name: t.value for name, t in existing.items() if name not in deletes}
            after.update({t.name: t.value for t in upserts})
            await events.stage_profile_changed(
                session, self._outbox, current, traits=after, changed=["traits"]
            )
        return current, ignored

    def with_events(
        self, events: Sequence[Event], wanted: Sequence[Mapping[str, Any]]
    ) -> Callable[[AsyncSession, Sequence[tuple[int, TrackResult]]], Awaitable[None]]:
        """What sets, in the transaction recording `events`, the traits each newly recorded one carries
        (wanted[i] for events[i]): on its person, from its source, as of its time (a late event does not
        win over a newer value); a duplicate sets nothing again. Raises TraitsRefused (ingestion's
        Alongside)."""

        async def set_with(session: AsyncSession, recorded: Sequence[tuple[int, TrackResult]]) -> None:
            now = datetime.now(UTC)
            for index, result in recorded:
                values = wanted[index]
                if not values or result.duplicate or result.violations or result.person_id is None:
                    continue
                event = events[index]
                try:
                    await self.set_traits(
                        session, result.person_id, values, event.source, now, at=event.occurred_at
                    )
                except InvalidArgument as error:
                    raise TraitsRefused(index, error) from error

        return set_with
