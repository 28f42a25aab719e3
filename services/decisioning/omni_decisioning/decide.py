"""Decide: the offers a person should see at a touchpoint, best first, logged and announced.

Calls arriving together are decided together (omni_kit.grouping): one transaction reads every person's
segments (and the offer catalogue's version) in one statement, logs every decision in one statement, stages
every decision_made in one outbox row, and commits once. A caller is answered only after that commit: a
decision answered is a decision logged. Offers are kept in memory (OfferCatalog) and reloaded in the same
transaction when the version read with the group has moved, so no call reads them and a change is seen by
the first group after it commits, on every replica.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from omni_decisioning.arbitration import Explained, explain, ranked
from omni_decisioning.entities import DecideQuery, Decision, Offer
from omni_decisioning.events import Publisher
from omni_decisioning.learning.arbitration import Choice, explain_learned
from omni_decisioning.learning.outcomes import Learning
from omni_decisioning.repository import Repository
from omni_kit.grouping import Groups
from omni_kit.ids import new_id
from omni_kit.runtime import Runtime

MAX_GROUP = 256
"""The most decisions logged in one transaction."""


@dataclass
class OfferCatalog:
    """The offers as of a catalogue version, ranked once per touchpoint (bounded by the touchpoints the
    offers name, plus one list for every other touchpoint)."""

    version: int = -1
    offers: list[Offer] = field(default_factory=list)
    _named: frozenset[str] = frozenset()
    _ranked: dict[str | None, list[Offer]] = field(default_factory=dict)

    def replace(self, version: int, offers: list[Offer]) -> None:
        self.version, self.offers, self._ranked = version, offers, {}
        self._named = frozenset(t for offer in offers for t in offer.touchpoints)

    def at(self, touchpoint: str) -> list[Offer]:
        """The offers shown at a touchpoint, best first (before segment eligibility)."""
        key = touchpoint if touchpoint in self._named else None
        found = self._ranked.get(key)
        if found is None:
            # Every touchpoint no offer names sees the same offers: those open to every touchpoint.
            found = self._ranked[key] = ranked(self.offers, key or "")
        return found


class Decider:
    """Answers Decide from decisioning's own tables only: no call to another service on this path."""

    def __init__(
        self, runtime: Runtime, repository: Repository, publisher: Publisher, learning: Learning
    ) -> None:
        self._runtime = runtime
        self._repository = repository
        self._publisher = publisher
        self._learning = learning
        self._catalog = OfferCatalog()
        self._groups: Groups[DecideQuery, Decision] = Groups(self._decide_many, max_group=MAX_GROUP)

    async def decide(self, query: DecideQuery) -> Decision:
        """Rank the eligible offers, log the decision and stage decisioning.decision_made with it; answered
        once that is committed.

        A person decisioning has never heard of simply belongs to no segment: they get the offers open to
        everyone, or none.
        """
        return await self._groups.call(query)

    async def _decide_many(self, queries: Sequence[DecideQuery]) -> list[Decision]:
        async with self._runtime.transaction() as session:
            version, learning_version, persons = await self._repository.persons_and_segments(
                session, [query.person_id for query in queries]
            )
            await self._refresh(session, version)
            await self._learning.refresh(session, learning_version)
            now = datetime.now(UTC)
            decisions = []
            for query, (person_id, segment_ids) in zip(queries, persons, strict=True):
                # Arbitration by priority, or learned where the touchpoint learns; every eligible offer is
                # logged with the probability the deciding policy gave it (learning/arbitration.py).
                choice = self._learning.arbiter.choose(
                    self._catalog.at(query.touchpoint),
                    segment_ids,
                    touchpoint=query.touchpoint,
                    limit=query.limit,
                    now=now,
                    catalog=self._catalog.version,
                )
                decisions.append(
                    Decision(
                        id=new_id(),
                        person_id=person_id,
                        actions=tuple(choice.actions),
                        explanations=tuple(self._explain(query, segment_ids, choice, now))
                        if query.explain
                        else (),
                        candidates=choice.candidates,
                        candidates_json=choice.candidates_json,
                        policy=choice.policy,
                        model_version=self._learning.arbiter.model.version,
                    )
                )
            pairs = list(zip(decisions, queries, strict=True))
            await self._repository.log_decisions(session, pairs, now, self._publisher.decisions_made(pairs))
        return decisions

    def _explain(
        self, query: DecideQuery, segment_ids: set[uuid.UUID], choice: Choice, now: datetime
    ) -> list[Explained]:
        explained = explain(
            self._catalog.offers,
            touchpoint=query.touchpoint,
            segment_ids=segment_ids,
            limit=query.limit,
            now=now,
        )
        return explain_learned(explained, choice) if choice.policy == "thompson" else explained

    async def _refresh(self, session: AsyncSession, version: int) -> None:
        if version != self._catalog.version:
            current, offers = await self._repository.live_offers(session)
            self._catalog.replace(current, offers)
