"""The contact rule on its own (which answers let a marketing or a transactional message out on a channel),
and the services' copy of profile's verdicts: newest announcement wins, erasure leaves a tombstone, answers
never announced read as no answer."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from omni.common.v1 import common_pb2
from omni.profile.v1 import events_pb2
from omni_kit import contact
from omni_kit.bus import make_envelope
from omni_kit.contact import Answer, ConsentState, Purpose, Reason, Verdict, judge
from omni_kit.db import create_engine

EMAIL, SMS = common_pb2.CHANNEL_EMAIL, common_pb2.CHANNEL_SMS
MARKETING, TRANSACTIONAL = Purpose.MARKETING, Purpose.TRANSACTIONAL
GRANTED, DENIED, REVOKED = ConsentState.GRANTED, ConsentState.DENIED, ConsentState.REVOKED


def _answer(
    state: ConsentState, *, purpose: Purpose = MARKETING, channel: int = EMAIL, pending: bool = False
) -> Answer:
    return Answer(channel=channel, purpose=purpose, state=state, awaiting_confirmation=pending)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (None, "no marketing consent for email"),
        (_answer(GRANTED), None),
        (_answer(DENIED), "no marketing consent for email: denied"),
        (_answer(REVOKED), "no marketing consent for email: revoked"),
        (
            _answer(GRANTED, pending=True),
            "no marketing consent for email: awaiting double opt-in confirmation",
        ),
    ],
    ids=["none", "granted", "denied", "revoked", "pending-double-opt-in"],
)
def test_marketing_needs_consent_that_allows_contact(answer: Answer | None, expected: str | None) -> None:
    verdict = judge(EMAIL, MARKETING, answer)
    assert verdict.refusal == expected
    assert verdict.allowed is (expected is None)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (None, None),
        (_answer(GRANTED, purpose=TRANSACTIONAL), None),
        (_answer(GRANTED, purpose=TRANSACTIONAL, pending=True), None),
        (_answer(DENIED, purpose=TRANSACTIONAL), "no transactional consent for email: denied"),
        (_answer(REVOKED, purpose=TRANSACTIONAL), "no transactional consent for email: revoked"),
    ],
    ids=["none", "granted", "pending", "denied", "revoked"],
)
def test_transactional_goes_out_unless_refused(answer: Answer | None, expected: str | None) -> None:
    assert judge(EMAIL, TRANSACTIONAL, answer).refusal == expected


@pytest.mark.parametrize("purpose", [MARKETING, TRANSACTIONAL])
@pytest.mark.parametrize("state", [None, GRANTED, DENIED, REVOKED])
def test_a_webhook_reaches_the_retailer_not_the_person_so_no_answer_refuses_it(
    purpose: Purpose, state: ConsentState | None
) -> None:
    webhook = common_pb2.CHANNEL_WEBHOOK
    answer = None if state is None else _answer(state, purpose=purpose, channel=webhook)
    assert judge(webhook, purpose, answer) == Verdict(webhook, purpose, True, Reason.NOT_A_CONTACT)
    # The copy of a person profile announced nothing about answers the same, and the name reads back.
    assert contact.PersonVerdicts(uuid.uuid4()).of(webhook, purpose).allowed
    assert contact.channel_name(webhook) == "webhook"
    event = contact.verdict_changed_event(
        uuid.uuid4(), [judge(webhook, purpose, None)], version=1, decided_at=datetime.now(UTC)
    )
    assert contact.verdicts_in(event) == [Verdict(webhook, purpose, True, Reason.NOT_A_CONTACT)]


def test_answers_count_per_channel_and_purpose_and_the_last_one_wins() -> None:
    verdicts = contact.judge_answers(
        [
            _answer(DENIED),  # marketing refused says nothing of transactional
            _answer(GRANTED, channel=SMS),
            _answer(REVOKED, channel=SMS),  # later: wins
            _answer(REVOKED, purpose=TRANSACTIONAL, channel=SMS),
        ]
    )
    assert verdicts == [
        Verdict(EMAIL, MARKETING, False, Reason.DENIED),
        Verdict(SMS, MARKETING, False, Reason.REVOKED),
        Verdict(SMS, TRANSACTIONAL, False, Reason.REVOKED),
    ]
    assert contact.PersonVerdicts(uuid.uuid4()).of(EMAIL, TRANSACTIONAL).allowed


def test_an_announcement_carries_the_verdicts_and_a_consumer_reads_them_back() -> None:
    verdicts = [
        Verdict(EMAIL, MARKETING, True, Reason.CONSENT_GRANTED),
        Verdict(SMS, TRANSACTIONAL, False, Reason.DENIED),
    ]
    event = contact.verdict_changed_event(uuid.uuid4(), verdicts, version=7, decided_at=datetime.now(UTC))
    assert contact.verdicts_in(event) == verdicts
    # A reason this build does not know (a newer profile's) keeps the verdict; one for analytics is no message's.
    event.verdicts.add(channel=common_pb2.CHANNEL_PUSH, purpose=4, allowed=True, reason=1)
    event.verdicts.add(channel=common_pb2.CHANNEL_PUSH, purpose=1, allowed=False, reason=99)  # type: ignore[arg-type]
    assert contact.verdicts_in(event)[2:] == [
        Verdict(common_pb2.CHANNEL_PUSH, MARKETING, False, Reason.UNSPECIFIED)
    ]


@pytest.fixture
async def engine(make_database: Callable[..., Any]) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(make_database("contact"), application_name="omni-test-contact")
    metadata = sa.MetaData()
    contact.define_table(metadata)
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    yield engine
    await engine.dispose()


async def _announce(session: AsyncSession, person: uuid.UUID, version: int, *verdicts: Verdict) -> None:
    event = contact.verdict_changed_event(
        person, list(verdicts), version=version, decided_at=datetime.now(UTC)
    )
    envelope = make_envelope(
        event, event_type=contact.CONTACT_VERDICT_CHANGED, producer="profile", person_id=str(person)
    )
    await contact.ContactVerdictHandler()(session, envelope)


GRANT = Verdict(EMAIL, MARKETING, True, Reason.CONSENT_GRANTED)
REVOKE = Verdict(EMAIL, MARKETING, False, Reason.REVOKED)


async def test_the_newest_announcement_wins_whatever_order_they_arrive_in(engine: AsyncEngine) -> None:
    ada, bob, never = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with AsyncSession(engine) as session, session.begin():
        await _announce(session, ada, 5, REVOKE)
        await _announce(session, ada, 3, GRANT)  # older, late: ignored
        await _announce(session, bob, 3, GRANT)
        await _announce(session, bob, 5, REVOKE)
        await _announce(session, bob, 5, GRANT)  # the same version again changes nothing
        verdicts = await contact.verdicts_of(session, [ada, bob, never])
        allowed = await contact.may_contact(session, [ada, bob, never], EMAIL, MARKETING)
        transactional = await contact.may_contact(session, [ada, never], EMAIL, TRANSACTIONAL)

    assert {p: v.version for p, v in verdicts.items()} == {ada: 5, bob: 5, never: 0}
    assert allowed == {
        ada: REVOKE,
        bob: REVOKE,
        never: Verdict(EMAIL, MARKETING, False, Reason.NO_CONSENT),  # never announced: no answer
    }
    assert all(v.allowed for v in transactional.values())


async def test_an_erased_person_keeps_a_tombstone_that_no_late_announcement_gets_past(
    engine: AsyncEngine,
) -> None:
    erased, kept = uuid.uuid4(), uuid.uuid4()
    async with AsyncSession(engine) as session, session.begin():
        await _announce(session, erased, 4, GRANT)
        await _announce(session, kept, 4, GRANT)
        await contact.forget(session, [erased])
        await _announce(session, erased, 9, GRANT)  # made before the erasure, applied after it
        allowed = await contact.may_contact(session, [erased, kept], EMAIL, MARKETING)
        stored = (
            await session.execute(
                sa.text("SELECT verdicts FROM contact_verdicts WHERE person_id = :p"), {"p": erased}
            )
        ).scalar_one()

    assert not allowed[erased].allowed
    assert allowed[kept].allowed
    assert stored == []


async def test_an_announcement_without_a_valid_person_is_skipped(engine: AsyncEngine) -> None:
    event = events_pb2.ContactVerdictChangedEvent(person_id="not-a-uuid", version=1)
    envelope = make_envelope(event, event_type=contact.CONTACT_VERDICT_CHANGED, producer="profile")
    async with AsyncSession(engine) as session, session.begin():
        await contact.ContactVerdictHandler()(session, envelope)
        assert await session.scalar(sa.text("SELECT count(*) FROM contact_verdicts")) == 0
