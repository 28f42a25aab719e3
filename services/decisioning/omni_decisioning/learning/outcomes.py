"""Recording outcomes, setting learning policies, importing and reading logged decisions: the learning end's
domain (no gRPC, no SQL)."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from omni_decisioning.learning.arbitration import Arbiter, LearnedModel
from omni_decisioning.learning.policy import LearningPolicy
from omni_decisioning.learning.repository import (
    ImportedDecision,
    LearningRepository,
    StoredDecision,
    StoredOutcome,
)
from omni_kit.errors import AlreadyExists, FailedPrecondition, NotFound


class Learning:
    """Outcomes in, posteriors out: what Decide's arbiter learns from."""

    def __init__(self, repository: LearningRepository, arbiter: Arbiter) -> None:
        self._repository = repository
        self.arbiter = arbiter

    async def refresh(self, session: AsyncSession, version: int) -> None:
        """Reload the policies and counts into the arbiter when a policy changed or the counts are due."""
        if self.arbiter.stale(version):
            loaded_at = time.monotonic()
            current, policies, counts = await self._repository.load(session)
            self.arbiter.replace(
                LearnedModel(version=current, loaded_at=loaded_at, policies=policies, counts=counts)
            )

    async def record(self, session: AsyncSession, outcome: StoredOutcome) -> tuple[StoredOutcome, bool]:
        """Record an outcome once per outcome id and count it for its offer's posterior.

        NotFound for a decision not in the log; FailedPrecondition (OFFER_NOT_CHOSEN) for an offer the
        decision did not choose; AlreadyExists (OUTCOME_ID_REUSED) for an id recorded with other content.
        The same id with the same content answers the first recording and changes nothing.
        """
        decision = await self._repository.decision(session, outcome.decision_id)
        if decision is None:
            raise NotFound(
                message=f"decision {outcome.decision_id} is not in the decision log",
                reason="DECISION_NOT_FOUND",
                metadata={"decision_id": str(outcome.decision_id)},
            )
        if outcome.offer_id not in decision.offer_ids:
            raise FailedPrecondition(
                message=f"decision {outcome.decision_id} did not choose offer {outcome.offer_id}",
                reason="OFFER_NOT_CHOSEN",
                metadata={"decision_id": str(outcome.decision_id), "offer_id": str(outcome.offer_id)},
            )
        now = datetime.now(UTC)
        if not await self._repository.insert_outcome(session, outcome, now):
            first = await self._repository.outcome(session, outcome.outcome_id)
            assert first is not None
            same = (first.decision_id, first.offer_id, first.type, first.value) == (
                outcome.decision_id,
                outcome.offer_id,
                outcome.type,
                outcome.value,
            )
            if not same:
                raise AlreadyExists(
                    message=f"outcome {outcome.outcome_id} was recorded with other content",
                    reason="OUTCOME_ID_REUSED",
                    metadata={"outcome_id": outcome.outcome_id},
                )
            return first, False
        await self._repository.count_outcome(
            session,
            offer_id=outcome.offer_id,
            touchpoint=decision.touchpoint,
            type_=outcome.type,
            value=outcome.value,
        )
        return outcome, True

    async def set_policy(self, session: AsyncSession, policy: LearningPolicy) -> LearningPolicy:
        """Replace a touchpoint's learning policy; Decide uses it from its next group on, on every replica."""
        await self._repository.set_policy(session, policy, datetime.now(UTC))
        return policy

    async def import_decisions(self, session: AsyncSession, decisions: list[ImportedDecision]) -> int:
        """Add decisions made elsewhere to the log; the number that were new."""
        return await self._repository.import_decisions(session, decisions)

    async def decision(
        self, session: AsyncSession, decision_id: uuid.UUID
    ) -> tuple[StoredDecision, list[StoredOutcome]]:
        """A logged decision and its outcomes; NotFound when it is not in the log."""
        found = await self._repository.decision(session, decision_id)
        if found is None:
            raise NotFound(
                message=f"decision {decision_id} is not in the decision log",
                reason="DECISION_NOT_FOUND",
                metadata={"decision_id": str(decision_id)},
            )
        return found, await self._repository.outcomes_of(session, decision_id)
