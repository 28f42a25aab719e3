"""Consent per channel and purpose, with double opt-in for email, a history and announcements (the answer,
and the contact verdicts it leads to: contact_verdicts.py).

Double opt-in: a grant with double_opt_in "pending_confirmation" is recorded as granted but does not allow
contact until a later grant with "confirmed" confirms it; confirming when nothing is pending is refused
(FailedPrecondition), confirming twice changes nothing. Any other answer (a plain grant, a denial, a
revocation) replaces the pending one.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from omni_kit.bus import Outbox
from omni_kit.errors import FailedPrecondition
from omni_kit.ids import new_id
from omni_profile import contact_verdicts, events, persons, repository
from omni_profile.domain import DEFAULT_PURPOSE, DEFAULT_SOURCE, Consent

PENDING = "pending_confirmation"
CONFIRMED = "confirmed"


class Consents:
    """Records consent answers; the caller owns the transaction."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox

    async def set_consent(
        self,
        session: AsyncSession,
        person_id: uuid.UUID,
        *,
        channel: str,
        state: str,
        source: str,
        now: datetime,
        purpose: str | None = None,
        double_opt_in: str | None = None,
    ) -> Consent:
        """Record a consent answer (checked: double opt-in only on email grants), keep it in the history
        and announce it."""
        current = await persons.lock_live(session, person_id)
        purpose = purpose or DEFAULT_PURPOSE
        consent = Consent(
            channel=channel,
            state=state,
            source=source or DEFAULT_SOURCE,
            updated_at=now,
            purpose=purpose,
            double_opt_in=double_opt_in,
        )
        if double_opt_in == CONFIRMED:
            existing = next(
                (
                    c
                    for c in (await repository.load_consents(session, [current]))[current]
                    if c.channel == channel and c.purpose == purpose
                ),
                None,
            )
            if existing is not None and existing.state == "granted" and existing.double_opt_in == CONFIRMED:
                return existing
            if existing is None or existing.state != "granted" or existing.double_opt_in != PENDING:
                raise FailedPrecondition(
                    message=f"no {channel} {purpose} consent is waiting for confirmation",
                    reason="NO_PENDING_CONFIRMATION",
                    metadata={"person_id": str(current), "channel": channel, "purpose": purpose},
                )
        await repository.write_consent(session, current, consent)
        await repository.record_consent_change(session, new_id(), current, consent)
        await events.stage_consent_changed(session, self._outbox, current, consent)
        await contact_verdicts.announce(session, self._outbox, [current], now)
        return consent
