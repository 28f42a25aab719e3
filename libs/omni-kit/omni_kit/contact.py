"""May we contact this person on this channel for this purpose? The one rule, and the services' copies of
profile's answer.

The rule (`judge`), over the consent answers profile records per channel and purpose:
- A message has one of two purposes. Marketing (promotions, newsletters, journeys) is opt-in: it may go only
  while the person's marketing consent for the channel is granted and, when email double opt-in is used,
  confirmed. No answer, denied, revoked or a grant awaiting confirmation: refused. Transactional (receipts,
  delivery notices, password resets) is owed to the person whatever they said about marketing, so it is
  opt-out: it may go unless the person denied or revoked transactional consent for the channel.
- Answers are per channel: one for email says nothing about SMS. A consent recorded without a purpose is
  marketing (what consent meant before purposes were recorded); answers for personalization or analytics
  bear on no message.
- One answer counts per channel and purpose: the latest (profile keeps one; a merge keeps the most recent of
  the persons'; an unmerged person starts without answers, which stay with the survivor).
- A channel that reaches the retailer's own systems, not the person (`NOT_A_CONTACT_CHANNELS`: the webhook),
  is allowed for both purposes whatever was answered (`Reason.NOT_A_CONTACT`): consent is the person's say
  over being contacted, and a webhook contacts the retailer. Profile refuses consent for such a channel, so
  it never announces a verdict for one; every copy answers it from this rule. What the retailer's systems
  then do with the payload (contact the person themselves) is theirs to check against consent.
- Not part of it: whether the person has an address on the channel (identity holds addresses and announces
  no change of them, so the gateway looks the address up at send time and fails a message without one),
  and suppression lists (none yet).

Who does what: profile alone evaluates the rule on the answers it holds and announces the verdicts of a
person (profile.contact_verdict_changed, ContactVerdictChangedEvent) whenever they may have changed, under a
version that grows with every announcement. Decisioning and the gateway keep the announced verdicts in a
table of their own (`create_table` in a migration, `define_table` in their models), fed by
`ContactVerdictHandler`, and ask `verdicts_of` / `may_contact`: decisioning to choose a journey's channel,
the gateway to let a message out at each delivery attempt. A person profile announced nothing about has
the verdicts of no answer, from the same rule.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncSession

from omni.common.v1 import common_pb2
from omni.events.v1 import envelope_pb2
from omni.profile.v1 import events_pb2, profile_pb2
from omni_kit.bus import unpack
from omni_kit.ids import parse_uuid

log = logging.getLogger(__name__)

CONTACT_VERDICT_CHANGED = "profile.contact_verdict_changed"
"""The event type profile announces verdicts with (payload omni.profile.v1.ContactVerdictChangedEvent)."""

Channel = int
"""An omni.common.v1.Channel number."""

NOT_A_CONTACT_CHANNELS: frozenset[Channel] = frozenset({common_pb2.CHANNEL_WEBHOOK})
"""Channels that reach the retailer's own systems, not the person: no consent is asked for them, and their
verdict always allows (Reason.NOT_A_CONTACT)."""


class Purpose(StrEnum):
    """What a message is for; only these two are purposes of a message."""

    MARKETING = "marketing"
    TRANSACTIONAL = "transactional"


class ConsentState(StrEnum):
    """What a person answered about being contacted (omni.profile.v1.ConsentState)."""

    GRANTED = "granted"
    DENIED = "denied"
    REVOKED = "revoked"


class Reason(StrEnum):
    """Why a message may or may not go (omni.profile.v1.ContactVerdictReason)."""

    UNSPECIFIED = "unspecified"
    """A reason this build does not know (from a newer profile); `allowed` still decides."""
    CONSENT_GRANTED = "consent_granted"
    NOT_REFUSED = "not_refused"
    NO_CONSENT = "no_consent"
    DENIED = "denied"
    REVOKED = "revoked"
    AWAITING_CONFIRMATION = "awaiting_confirmation"
    NOT_A_CONTACT = "not_a_contact"
    """Allowed: the channel reaches the retailer's systems, not the person (NOT_A_CONTACT_CHANNELS)."""


@dataclass(frozen=True)
class Answer:
    """A person's consent answer for one channel and message purpose, as profile holds it."""

    channel: Channel
    purpose: Purpose
    state: ConsentState
    awaiting_confirmation: bool = False
    """A grant made with email double opt-in that the person has not confirmed yet."""


_REFUSAL_DETAIL = {
    Reason.DENIED: "denied",
    Reason.REVOKED: "revoked",
    Reason.AWAITING_CONFIRMATION: "awaiting double opt-in confirmation",
}


@dataclass(frozen=True)
class Verdict:
    """Whether a message of `purpose` may go to a person on `channel`, and why."""

    channel: Channel
    purpose: Purpose
    allowed: bool
    reason: Reason

    @property
    def refusal(self) -> str | None:
        """Why the message may not go, in words ("no marketing consent for email: revoked"); None if it may."""
        if self.allowed:
            return None
        text = f"no {self.purpose.value} consent for {channel_name(self.channel)}"
        detail = _REFUSAL_DETAIL.get(self.reason)
        return f"{text}: {detail}" if detail else text


def judge(channel: Channel, purpose: Purpose, answer: Answer | None) -> Verdict:
    """The rule: may a message of `purpose` go on `channel` to a person whose answer for them is `answer`
    (None: never answered)?"""
    if channel in NOT_A_CONTACT_CHANNELS:
        return Verdict(channel, purpose, True, Reason.NOT_A_CONTACT)
    if purpose == Purpose.TRANSACTIONAL:
        if answer is not None and answer.state == ConsentState.DENIED:
            return Verdict(channel, purpose, False, Reason.DENIED)
        if answer is not None and answer.state == ConsentState.REVOKED:
            return Verdict(channel, purpose, False, Reason.REVOKED)
        return Verdict(channel, purpose, True, Reason.NOT_REFUSED)
    if answer is None:
        return Verdict(channel, purpose, False, Reason.NO_CONSENT)
    if answer.state == ConsentState.GRANTED and answer.awaiting_confirmation:
        return Verdict(channel, purpose, False, Reason.AWAITING_CONFIRMATION)
    if answer.state == ConsentState.GRANTED:
        return Verdict(channel, purpose, True, Reason.CONSENT_GRANTED)
    return Verdict(channel, purpose, False, Reason(answer.state.value))


def judge_answers(answers: Iterable[Answer]) -> list[Verdict]:
    """The verdicts of a person's answers, one per channel and purpose answered for (the last answer given
    for a channel and purpose counts), in channel and purpose order."""
    latest = {(a.channel, a.purpose): a for a in answers}
    return [judge(channel, purpose, latest[channel, purpose]) for channel, purpose in sorted(latest)]


def channel_name(channel: Channel) -> str:
    """The channel's short name ("email", "call_center"), or its number when this build does not know it."""
    try:
        return common_pb2.Channel.Name(channel).removeprefix("CHANNEL_").lower()  # type: ignore[arg-type]
    except ValueError:
        return str(channel)


# -- the event ----------------------------------------------------------------------------------------------

_PURPOSE_TO_PROTO = {
    Purpose.MARKETING: profile_pb2.CONSENT_PURPOSE_MARKETING,
    Purpose.TRANSACTIONAL: profile_pb2.CONSENT_PURPOSE_TRANSACTIONAL,
}
_PURPOSE_FROM_PROTO = {number: purpose for purpose, number in _PURPOSE_TO_PROTO.items()}
_REASON_PREFIX = "CONTACT_VERDICT_REASON_"


def verdict_changed_event(
    person_id: uuid.UUID, verdicts: Sequence[Verdict], *, version: int, decided_at: datetime
) -> events_pb2.ContactVerdictChangedEvent:
    """The payload announcing a person's verdicts (those of the channels and purposes it answered for)."""
    event = events_pb2.ContactVerdictChangedEvent(
        person_id=str(person_id),
        version=version,
        verdicts=[
            events_pb2.ContactVerdict(
                channel=verdict.channel,  # type: ignore[arg-type]
                purpose=_PURPOSE_TO_PROTO[verdict.purpose],
                allowed=verdict.allowed,
                reason=events_pb2.ContactVerdictReason.Value(_REASON_PREFIX + verdict.reason.name),
            )
            for verdict in verdicts
        ],
    )
    event.decide_time.FromDatetime(decided_at)
    return event


def verdicts_in(event: events_pb2.ContactVerdictChangedEvent) -> list[Verdict]:
    """The verdicts an announcement carries; entries for a purpose a message cannot have are skipped."""
    verdicts = []
    for entry in event.verdicts:
        purpose = _PURPOSE_FROM_PROTO.get(entry.purpose)
        if purpose is None:
            continue
        try:
            reason = Reason[events_pb2.ContactVerdictReason.Name(entry.reason).removeprefix(_REASON_PREFIX)]
        except (KeyError, ValueError):
            reason = Reason.UNSPECIFIED
        verdicts.append(Verdict(entry.channel, purpose, entry.allowed, reason))
    return verdicts


# -- the consumers' copy ------------------------------------------------------------------------------------

TABLE = "contact_verdicts"

_TABLE_COMMENT = "profile's contact verdicts of a person, as last announced (profile.contact_verdict_changed)"
_VERDICTS_COMMENT = (
    'The verdicts of the channels and purposes the person answered for: [{"channel": "email", "purpose": '
    '"marketing", "allowed": true, "reason": "consent_granted"}, ...]; the others are those of no answer.'
)


def _columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("person_id", sa.Uuid, primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False, comment="The announcement's version."),
        sa.Column("verdicts", JSONB, nullable=False, comment=_VERDICTS_COMMENT),
        sa.Column("decide_time", sa.DateTime(timezone=True), nullable=False),
    ]


def define_table(metadata: sa.MetaData) -> sa.Table:
    """Declare the verdicts table in a service's models (so its schema is checked like the service's own)."""
    return sa.Table(TABLE, metadata, *_columns(), comment=_TABLE_COMMENT)


def create_table(op: Any) -> None:
    """Create the verdicts table in a service's migration (op is alembic.op)."""
    op.create_table(TABLE, *_columns(), comment=_TABLE_COMMENT)


def drop_table(op: Any) -> None:
    """Undo create_table."""
    op.drop_table(TABLE)


_table = define_table(sa.MetaData())
_PURPOSES = frozenset(p.value for p in Purpose)
_REASONS = frozenset(r.value for r in Reason)


def _to_json(verdict: Verdict) -> dict[str, Any]:
    return {
        "channel": channel_name(verdict.channel),
        "purpose": verdict.purpose.value,
        "allowed": verdict.allowed,
        "reason": verdict.reason.value,
    }


def _channel_number(name: str) -> Channel | None:
    if name.isdigit():
        return int(name)
    try:
        return common_pb2.Channel.Value("CHANNEL_" + name.upper())
    except ValueError:
        return None


def _from_json(item: Mapping[str, Any]) -> Verdict | None:
    channel = _channel_number(str(item.get("channel", "")))
    if channel is None or item.get("purpose") not in _PURPOSES:
        return None
    reason = item.get("reason")
    return Verdict(
        channel,
        Purpose(item["purpose"]),
        bool(item.get("allowed")),
        Reason(reason) if reason in _REASONS else Reason.UNSPECIFIED,
    )


# Text, not a compiled insert: consumers apply one per announcement (a republish is one per person who answered).
_RECORD = sa.text(
    f"INSERT INTO {TABLE} (person_id, version, verdicts, decide_time) "
    "VALUES (:person, :version, CAST(:verdicts AS jsonb), :at) "
    f"ON CONFLICT (person_id) DO UPDATE SET version = excluded.version, verdicts = excluded.verdicts, "
    f"decide_time = excluded.decide_time WHERE {TABLE}.version < excluded.version RETURNING person_id"
)


@dataclass(frozen=True)
class PersonVerdicts:
    """A person's verdicts as this service last heard them; `version` 0 when it heard none."""

    person_id: uuid.UUID
    version: int = 0
    verdicts: Mapping[tuple[Channel, Purpose], Verdict] = field(default_factory=dict)

    def of(self, channel: Channel, purpose: Purpose) -> Verdict:
        """The verdict for a channel and purpose (that of no answer when none was announced)."""
        return self.verdicts.get((channel, purpose)) or judge(channel, purpose, None)


async def record(
    session: AsyncSession,
    person_id: uuid.UUID,
    verdicts: Sequence[Verdict],
    *,
    version: int,
    decided_at: datetime,
) -> bool:
    """Keep a person's announced verdicts unless a newer announcement is known; True when they were kept."""
    kept = await session.scalar(
        _RECORD,
        {
            "person": person_id,
            "version": version,
            "verdicts": orjson.dumps([_to_json(v) for v in verdicts]).decode(),
            "at": decided_at,
        },
    )
    return kept is not None


async def verdicts_of(
    session: AsyncSession, person_ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, PersonVerdicts]:
    """The verdicts of some persons, in one query. Ids are taken as they are: a caller that follows
    identity's merges passes the survivors (profile announces verdicts of live persons only)."""
    found = {pid: PersonVerdicts(pid) for pid in person_ids}
    if not person_ids:
        return found
    rows = await session.execute(
        sa.select(_table.c.person_id, _table.c.version, _table.c.verdicts).where(
            _table.c.person_id.in_(list(person_ids))
        )
    )
    for person_id, version, items in rows:
        verdicts = [v for v in map(_from_json, items) if v is not None]
        found[person_id] = PersonVerdicts(person_id, version, {(v.channel, v.purpose): v for v in verdicts})
    return found


async def may_contact(
    session: AsyncSession, person_ids: Collection[uuid.UUID], channel: Channel, purpose: Purpose
) -> dict[uuid.UUID, Verdict]:
    """May a message of `purpose` go to each of these persons on `channel`? Their verdicts, in one query."""
    return {
        pid: verdicts.of(channel, purpose)
        for pid, verdicts in (await verdicts_of(session, person_ids)).items()
    }


_TOMBSTONE_VERSION = 2**63 - 1


async def forget(session: AsyncSession, person_ids: Collection[uuid.UUID]) -> None:
    """Forget the verdicts of erased persons, leaving a tombstone (no verdicts, a version no announcement
    reaches) so that an announcement made before the erasure and applied after it keeps nothing."""
    if not person_ids:
        return
    now = datetime.now(UTC)
    statement = insert(_table).values(
        [
            {"person_id": pid, "version": _TOMBSTONE_VERSION, "verdicts": [], "decide_time": now}
            for pid in sorted(set(person_ids))
        ]
    )
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[_table.c.person_id],
            set_={
                "version": statement.excluded.version,
                "verdicts": statement.excluded.verdicts,
                "decide_time": statement.excluded.decide_time,
            },
        )
    )


class ContactVerdictHandler:
    """Applies profile.contact_verdict_changed to the service's verdicts table, in the consumer's transaction.

    Newest wins by version, so redelivered, repeated or reordered announcements end in the same state. An
    announcement without a valid person id is skipped (retrying cannot fix it).
    """

    async def __call__(self, session: AsyncSession, envelope: envelope_pb2.Envelope) -> None:
        """Handle one envelope."""
        event = unpack(envelope, events_pb2.ContactVerdictChangedEvent)
        person_id = parse_uuid(event.person_id)
        if person_id is None:
            log.warning(
                "ignoring contact verdicts %s without a valid person id %r", envelope.id, event.person_id
            )
            return
        decided_at = (
            event.decide_time.ToDatetime(tzinfo=UTC) if event.HasField("decide_time") else datetime.now(UTC)
        )
        kept = await record(
            session, person_id, verdicts_in(event), version=event.version, decided_at=decided_at
        )
        if not kept:
            log.info("contact verdicts %s are older than those known for %s; ignored", envelope.id, person_id)
