"""Contact verdicts: may a person be contacted on a channel for a purpose? Profile alone answers, by the one
rule (omni_kit.contact) applied to the consent answers it holds, and announces the answer
(profile.contact_verdict_changed) for decisioning and the gateway, which act on their copies of it.

A person's verdicts are announced whenever they may have changed: a consent answer recorded (consents.py), a
merge that brought the merged persons' answers to the survivor, an unmerge (the restored person starts
without answers: they stay with the survivor; merge.py), and the republish jobs below. Each announcement
carries all the person's verdicts under a new version, taken from one sequence while the person's profile
row is locked: of two announcements about a person the later has the higher version, so consumers keep the
highest and need no order.

Republishing is due work on omni-kit's scheduler: a job of kind profile.contact_verdict_republish per person
whose verdicts are to be announced again, run in batches (replicas share them, each batch one transaction).
Migration 0007 queued every person who had consent answers, so that consumers keeping verdicts from that
upgrade on learn the verdicts of persons who answered before (0009 turned that queue into jobs). To
republish everything, e.g. for a new consumer, schedule them again; profile runs them without a restart:

    INSERT INTO scheduled_jobs (kind, key, due_at)
    SELECT DISTINCT 'profile.contact_verdict_republish', person_id::text, now() FROM consents
    ON CONFLICT DO NOTHING;
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from omni.common.v1 import common_pb2
from omni_kit import contact
from omni_kit.bus import Outbox
from omni_kit.scheduler import Job, JobWorker
from omni_profile import repository, wire
from omni_profile.domain import Consent

log = logging.getLogger(__name__)

CONTACT_VERDICT_CHANGED = contact.CONTACT_VERDICT_CHANGED

_PENDING = "pending_confirmation"
_PURPOSES = frozenset(p.value for p in contact.Purpose)


def answers(consents: Iterable[Consent]) -> list[contact.Answer]:
    """The consent answers that bear on messages (marketing and transactional, on a known channel)."""
    found = []
    for consent in consents:
        channel = wire.channel_value(consent.channel)
        if channel == common_pb2.CHANNEL_UNSPECIFIED or consent.purpose not in _PURPOSES:
            continue
        found.append(
            contact.Answer(
                channel=channel,
                purpose=contact.Purpose(consent.purpose),
                state=contact.ConsentState(consent.state),
                awaiting_confirmation=consent.double_opt_in == _PENDING,
            )
        )
    return found


def verdicts(consents: Iterable[Consent]) -> list[contact.Verdict]:
    """A person's verdicts for the channels and purposes it answered for."""
    return contact.judge_answers(answers(consents))


async def announce(
    session: AsyncSession, outbox: Outbox, person_ids: Sequence[uuid.UUID], now: datetime
) -> None:
    """Stage the current verdicts of live persons whose profile rows the caller has locked."""
    if not person_ids:
        return
    consents = await repository.load_consents(session, person_ids)
    versions = await repository.next_verdict_versions(session, len(person_ids))
    await outbox.add_envelopes(
        session,
        [
            outbox.envelope(
                contact.verdict_changed_event(
                    person_id, verdicts(consents[person_id]), version=version, decided_at=now
                ),
                event_type=CONTACT_VERDICT_CHANGED,
                person_id=str(person_id),
            )
            for person_id, version in zip(person_ids, versions, strict=True)
        ],
    )


REPUBLISH = "profile.contact_verdict_republish"
"""The job kind that announces a person's verdicts again (keyed by the person id)."""


class Republisher:
    """Announces again the verdicts of the persons whose republish jobs are due."""

    def register(self, worker: JobWorker, *, batch_size: int = 500) -> None:
        """Have the worker run the republish jobs, batch_size persons per transaction."""
        worker.register(REPUBLISH, self.republish, batch_size=batch_size, lease=timedelta(minutes=2))

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox

    async def republish(self, session: AsyncSession, jobs: Sequence[Job]) -> None:
        """The job handler: announce the verdicts of the jobs' persons, those still live."""
        due = sorted({uuid.UUID(job.key) for job in jobs})
        states = await repository.lock_profiles(session, due)
        # A person merged or erased since it was queued has no verdicts of its own.
        live = [p for p in due if p in states and states[p].merged_into is None and not states[p].erased]
        await announce(session, self._outbox, live, datetime.now(UTC))
        if live:
            log.info("republished the contact verdicts of %d persons", len(live))
