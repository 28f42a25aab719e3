"""Contact verdicts: may a person be contacted on a channel for a purpose? Profile alone answers, by the one
rule (omni_kit.contact) applied to the consent answers it holds, and announces the answer
(profile.contact_verdict_changed) for decisioning and the gateway, which act on their copies of it.

A person's verdicts are announced whenever they may have changed: a consent answer recorded (consents.py), a
merge that brought the merged persons' answers to the survivor, an unmerge (the restored person starts
without answers: they stay with the survivor; merge.py), and the republish queue below. Each announcement
carries all the person's verdicts under a new version, taken from one sequence while the person's profile
row is locked: of two announcements about a person the later has the higher version, so consumers keep the
highest and need no order.

The republish queue (contact_verdicts_due) holds persons whose verdicts are to be announced again. Migration
0007 fills it with every person who has consent answers, so that consumers keeping verdicts from that upgrade
on learn the verdicts of persons who answered before; profile drains it at start, a batch per transaction
(replicas share the work). To republish everything, e.g. for a new consumer, fill it again and restart:

    INSERT INTO contact_verdicts_due SELECT DISTINCT person_id FROM consents ON CONFLICT DO NOTHING;
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from omni.common.v1 import common_pb2
from omni_kit import contact
from omni_kit.bus import Outbox
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


Transaction = Callable[[], AbstractAsyncContextManager[AsyncSession]]


class Republisher:
    """Announces again the verdicts of the persons in the republish queue."""

    def __init__(self, outbox: Outbox, *, batch_size: int = 500) -> None:
        self._outbox = outbox
        self._batch_size = batch_size

    async def run(self, transaction: Transaction) -> None:
        """Drain the queue, one batch per transaction."""
        total = 0
        while True:
            async with transaction() as session:
                taken = await self.republish_batch(session)
            if not taken:
                if total:
                    log.info("republished the contact verdicts of %d persons", total)
                return
            total += taken

    async def republish_batch(self, session: AsyncSession) -> int:
        """Announce one batch of the queue and take it off; how many persons it held (0: none left)."""
        due = await repository.claim_due_verdicts(session, self._batch_size)
        if not due:
            return 0
        states = await repository.lock_profiles(session, due)
        # A person merged or erased since it was queued has no verdicts of its own.
        live = [p for p in due if p in states and states[p].merged_into is None and not states[p].erased]
        await announce(session, self._outbox, live, datetime.now(UTC))
        await repository.delete_due_verdicts(session, due)
        return len(due)
