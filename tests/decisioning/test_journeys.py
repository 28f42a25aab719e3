"""Journeys over gRPC and JetStream: profile's contact verdicts and segment events in, send requests out."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from datetime import UTC, datetime, timedelta

from omni.common.v1 import common_pb2 as c
from omni.decisioning.v1 import decisioning_pb2 as d
from omni.decisioning.v1 import events_pb2
from omni.events.v1 import envelope_pb2
from omni.identity.v1 import events_pb2 as identity_events
from omni.profile.v1 import events_pb2 as profile_events
from omni.profile.v1 import profile_pb2 as p
from omni.segmentation.v1 import events_pb2 as segmentation_events
from omni_kit import contact
from omni_kit.bus import unpack

from .support import Decisioning

SEND_REQUESTED = "decisioning.send_requested"


async def create_journey(
    decisioning: Decisioning, segment_id: uuid.UUID, channels: list[c.Channel.ValueType]
) -> d.Journey:
    """A journey on a segment that exists, with a new template for the first of its channels."""
    response = await decisioning.stub.CreateJourney(
        d.CreateJourneyRequest(
            journey=d.Journey(
                name=f"journey-{uuid.uuid4().hex[:8]}",
                trigger_segment_id=str(segment_id),
                channels=channels,
                template_id=await decisioning.template(channels[0]),
            )
        )
    )
    return response.journey


_versions = itertools.count(1)
_answers: dict[uuid.UUID, list[contact.Answer]] = {}
_STATES = {
    p.CONSENT_STATE_GRANTED: contact.ConsentState.GRANTED,
    p.CONSENT_STATE_DENIED: contact.ConsentState.DENIED,
    p.CONSENT_STATE_REVOKED: contact.ConsentState.REVOKED,
}


async def announce(
    decisioning: Decisioning, person: uuid.UUID, verdicts: list[contact.Verdict], *, version: int
) -> envelope_pb2.Envelope:
    """Publish profile.contact_verdict_changed for the person, as profile would."""
    return await decisioning.feed(
        contact.verdict_changed_event(person, verdicts, version=version, decided_at=datetime.now(UTC)),
        event_type=contact.CONTACT_VERDICT_CHANGED,
        person_id=str(person),
    )


async def grant(
    decisioning: Decisioning,
    person: uuid.UUID,
    channel: c.Channel.ValueType,
    state: p.ConsentState.ValueType = p.CONSENT_STATE_GRANTED,
    *,
    purpose: contact.Purpose = contact.Purpose.MARKETING,
    pending: bool = False,
) -> envelope_pb2.Envelope:
    """The person answers (marketing, unless said otherwise) for a channel; profile announces all its verdicts
    under a new version."""
    answer = contact.Answer(channel, purpose, _STATES[state], awaiting_confirmation=pending)
    _answers.setdefault(person, []).append(answer)
    return await announce(
        decisioning, person, contact.judge_answers(_answers[person]), version=next(_versions)
    )


async def enter(
    decisioning: Decisioning, person: uuid.UUID, segment: uuid.UUID, *, at: datetime | None = None
) -> envelope_pb2.Envelope:
    return await decisioning.feed(
        segmentation_events.PersonEnteredSegmentEvent(
            person_id=str(person), segment_id=str(segment), segment_name="abandoned cart"
        ),
        event_type="segmentation.person_entered_segment",
        person_id=str(person),
        occurred_at=at,
    )


async def run_outcome(decisioning: Decisioning, event: envelope_pb2.Envelope) -> str:
    outcome: str = await decisioning.eventually(
        "SELECT outcome FROM journey_runs WHERE trigger_event_id = :event", event=uuid.UUID(event.id)
    )
    return outcome


def sends_to(decisioning: Decisioning, person: uuid.UUID) -> list[events_pb2.SendRequestedEvent]:
    return [
        unpack(envelope, events_pb2.SendRequestedEvent)
        for envelope in decisioning.published.matching(
            lambda e: e.type == SEND_REQUESTED and e.person_id == str(person)
        )
    ]


async def staged_sends(decisioning: Decisioning, person: uuid.UUID) -> int:
    count: int = await decisioning.scalar(
        "SELECT count(*) FROM outbox WHERE type = :type AND person_id = :person",
        type=SEND_REQUESTED,
        person=str(person),
    )
    return count


async def test_entering_the_segment_requests_a_send_on_the_first_consented_channel(
    decisioning: Decisioning,
) -> None:
    person, segment = uuid.uuid4(), await decisioning.segment()
    journey = await create_journey(decisioning, segment, [c.CHANNEL_PUSH, c.CHANNEL_EMAIL, c.CHANNEL_SMS])
    await grant(decisioning, person, c.CHANNEL_PUSH, p.CONSENT_STATE_DENIED)
    await grant(decisioning, person, c.CHANNEL_EMAIL)
    latest = await grant(decisioning, person, c.CHANNEL_SMS)
    entry = await enter(decisioning, person, segment)

    envelope = await decisioning.published.wait_for(
        lambda e: e.type == SEND_REQUESTED and e.person_id == str(person)
    )
    send = unpack(envelope, events_pb2.SendRequestedEvent)
    assert send.channel == c.CHANNEL_EMAIL
    assert send.request_id == f"journey:{journey.id}:{entry.id}"
    assert send.person_id == str(person)
    assert send.template_id == journey.template_id
    assert send.journey_id == journey.id
    # The gateway holds the send until it knows the verdicts the channel was chosen by.
    assert send.contact_verdict_version == unpack(latest, profile_events.ContactVerdictChangedEvent).version
    assert envelope.producer == "decisioning"
    assert await run_outcome(decisioning, entry) == "send_requested"


async def test_no_send_without_consent(decisioning: Decisioning) -> None:
    person, segment = uuid.uuid4(), await decisioning.segment()
    await create_journey(decisioning, segment, [c.CHANNEL_EMAIL, c.CHANNEL_SMS])
    await grant(decisioning, person, c.CHANNEL_EMAIL, p.CONSENT_STATE_REVOKED)
    await grant(decisioning, person, c.CHANNEL_PUSH)  # granted, but not a channel of the journey
    entry = await enter(decisioning, person, segment)

    assert await run_outcome(decisioning, entry) == "no_consented_channel"
    assert await staged_sends(decisioning, person) == 0
    await asyncio.sleep(0.3)
    assert sends_to(decisioning, person) == []


async def test_only_a_verdict_allowing_marketing_lets_a_journey_send(decisioning: Decisioning) -> None:
    person, segment = uuid.uuid4(), await decisioning.segment()
    await create_journey(decisioning, segment, [c.CHANNEL_EMAIL, c.CHANNEL_SMS])
    # Email: a marketing grant still waiting for its double opt-in confirmation.
    await grant(decisioning, person, c.CHANNEL_EMAIL, pending=True)
    # SMS: granted for order updates only (transactional is allowed there, marketing is not).
    await grant(decisioning, person, c.CHANNEL_SMS, purpose=contact.Purpose.TRANSACTIONAL)
    first = await enter(decisioning, person, segment)
    assert await run_outcome(decisioning, first) == "no_consented_channel"

    await grant(decisioning, person, c.CHANNEL_EMAIL)  # confirmed
    second = await enter(decisioning, person, segment)
    assert await run_outcome(decisioning, second) == "send_requested"
    envelope = await decisioning.published.wait_for(
        lambda e: e.type == SEND_REQUESTED and e.person_id == str(person)
    )
    assert unpack(envelope, events_pb2.SendRequestedEvent).channel == c.CHANNEL_EMAIL


async def test_a_person_nobody_told_us_about_gets_nothing(decisioning: Decisioning) -> None:
    person, segment = uuid.uuid4(), await decisioning.segment()
    await create_journey(decisioning, segment, [c.CHANNEL_EMAIL])
    entry = await enter(decisioning, person, segment)
    assert await run_outcome(decisioning, entry) == "no_consented_channel"
    assert await staged_sends(decisioning, person) == 0


async def test_reentry_within_the_window_is_suppressed_and_after_it_runs_again(
    decisioning: Decisioning,
) -> None:
    person, segment = uuid.uuid4(), await decisioning.segment()
    journey = await create_journey(decisioning, segment, [c.CHANNEL_EMAIL])
    await grant(decisioning, person, c.CHANNEL_EMAIL)
    t0 = datetime.now(UTC)
    first = await enter(decisioning, person, segment, at=t0)
    assert await run_outcome(decisioning, first) == "send_requested"
    again = await enter(decisioning, person, segment, at=t0 + timedelta(hours=2))
    assert await run_outcome(decisioning, again) == "suppressed_reentry"
    assert await staged_sends(decisioning, person) == 1

    later = await enter(decisioning, person, segment, at=t0 + timedelta(days=2))
    assert await run_outcome(decisioning, later) == "send_requested"
    await decisioning.published.wait_for(
        lambda e: (
            e.type == SEND_REQUESTED
            and unpack(e, events_pb2.SendRequestedEvent).request_id == f"journey:{journey.id}:{later.id}"
        )
    )
    assert sorted(s.request_id for s in sends_to(decisioning, person)) == sorted(
        [f"journey:{journey.id}:{first.id}", f"journey:{journey.id}:{later.id}"]
    )


GRANTED_EMAIL = contact.Verdict(
    c.CHANNEL_EMAIL, contact.Purpose.MARKETING, True, contact.Reason.CONSENT_GRANTED
)
REVOKED_EMAIL = contact.Verdict(c.CHANNEL_EMAIL, contact.Purpose.MARKETING, False, contact.Reason.REVOKED)


async def test_a_late_older_verdict_does_not_undo_a_newer_one(decisioning: Decisioning) -> None:
    person, segment = uuid.uuid4(), await decisioning.segment()
    await create_journey(decisioning, segment, [c.CHANNEL_EMAIL])
    await announce(decisioning, person, [REVOKED_EMAIL], version=next(_versions) + 1)
    late = await announce(decisioning, person, [GRANTED_EMAIL], version=next(_versions) - 1)
    await decisioning.eventually("SELECT 1 FROM inbox WHERE event_id = :event", event=uuid.UUID(late.id))
    assert (
        await decisioning.scalar(
            "SELECT verdicts -> 0 ->> 'reason' FROM contact_verdicts WHERE person_id = :person", person=person
        )
        == "revoked"
    )

    entry = await enter(decisioning, person, segment)
    assert await run_outcome(decisioning, entry) == "no_consented_channel"
    assert await staged_sends(decisioning, person) == 0


async def test_a_newer_verdict_replaces_the_older_one(decisioning: Decisioning) -> None:
    person, segment = uuid.uuid4(), await decisioning.segment()
    await create_journey(decisioning, segment, [c.CHANNEL_SMS])
    await grant(decisioning, person, c.CHANNEL_SMS, p.CONSENT_STATE_DENIED)
    await grant(decisioning, person, c.CHANNEL_SMS, p.CONSENT_STATE_GRANTED)
    entry = await enter(decisioning, person, segment)
    assert await run_outcome(decisioning, entry) == "send_requested"
    send = unpack(
        await decisioning.published.wait_for(
            lambda e: e.type == SEND_REQUESTED and e.person_id == str(person)
        ),
        events_pb2.SendRequestedEvent,
    )
    assert send.channel == c.CHANNEL_SMS


async def test_every_journey_of_the_segment_runs(decisioning: Decisioning) -> None:
    person, segment = uuid.uuid4(), await decisioning.segment()
    email = await create_journey(decisioning, segment, [c.CHANNEL_EMAIL])
    push = await create_journey(decisioning, segment, [c.CHANNEL_PUSH, c.CHANNEL_EMAIL])
    other = await create_journey(decisioning, await decisioning.segment(), [c.CHANNEL_EMAIL])
    await grant(decisioning, person, c.CHANNEL_EMAIL)
    entry = await enter(decisioning, person, segment)
    await decisioning.eventually(
        "SELECT count(*) = 2 FROM journey_runs WHERE trigger_event_id = :event", event=uuid.UUID(entry.id)
    )
    await decisioning.published.wait_for(
        lambda e: e.type == SEND_REQUESTED and unpack(e, events_pb2.SendRequestedEvent).journey_id == push.id
    )
    sends = {s.journey_id: s for s in sends_to(decisioning, person)}
    assert set(sends) == {email.id, push.id}
    assert other.id not in sends
    assert {s.channel for s in sends.values()} == {c.CHANNEL_EMAIL}


async def test_a_redelivered_entry_sends_once(decisioning: Decisioning) -> None:
    person, segment = uuid.uuid4(), await decisioning.segment()
    await create_journey(decisioning, segment, [c.CHANNEL_EMAIL])
    await grant(decisioning, person, c.CHANNEL_EMAIL)
    entry = await enter(decisioning, person, segment)
    # The same event again under another message id, so JetStream keeps it and the inbox must drop it.
    await decisioning.js.publish(
        f"{decisioning.namespace}.events.segmentation.person_entered_segment",
        entry.SerializeToString(),
        headers={"Nats-Msg-Id": f"{entry.id}-again"},
    )
    marker = await grant(decisioning, person, c.CHANNEL_SMS)
    await decisioning.eventually("SELECT 1 FROM inbox WHERE event_id = :event", event=uuid.UUID(marker.id))
    assert await decisioning.scalar("SELECT count(*) FROM journey_runs WHERE person_id = :p", p=person) == 1
    assert await staged_sends(decisioning, person) == 1


async def test_after_a_merge_the_survivors_verdicts_decide_as_profile_announces_them(
    decisioning: Decisioning,
) -> None:
    survivor, merged, segment = uuid.uuid4(), uuid.uuid4(), await decisioning.segment()
    journey = await create_journey(decisioning, segment, [c.CHANNEL_SMS, c.CHANNEL_EMAIL])
    await grant(decisioning, merged, c.CHANNEL_EMAIL)
    await grant(decisioning, survivor, c.CHANNEL_SMS, p.CONSENT_STATE_DENIED)
    await decisioning.feed(
        identity_events.PersonsMergedEvent(survivor_person_id=str(survivor), merged_person_ids=[str(merged)]),
        event_type="identity.persons_merged",
        person_id=str(survivor),
    )
    # Decisioning does not merge consent itself: until profile announces the survivor's verdicts, the
    # survivor's own decide (an entry announced under the old id reaches the survivor).
    before = await enter(decisioning, merged, segment)
    assert await run_outcome(decisioning, before) == "no_consented_channel"
    # Profile merged the answers (the email grant came with the merged person) and announces them.
    await grant(decisioning, survivor, c.CHANNEL_EMAIL)
    entry = await enter(decisioning, merged, segment)
    assert await run_outcome(decisioning, entry) == "send_requested"
    send = unpack(
        await decisioning.published.wait_for(
            lambda e: e.type == SEND_REQUESTED and e.person_id == str(survivor)
        ),
        events_pb2.SendRequestedEvent,
    )
    assert send.channel == c.CHANNEL_EMAIL
    assert send.request_id == f"journey:{journey.id}:{entry.id}"


async def test_list_journeys_pages_through_all_of_them(decisioning: Decisioning) -> None:
    created = [
        await create_journey(decisioning, await decisioning.segment(), [c.CHANNEL_EMAIL]) for _ in range(5)
    ]
    seen: list[d.Journey] = []
    token = ""
    while True:
        page = await decisioning.stub.ListJourneys(d.ListJourneysRequest(page_size=2, page_token=token))
        assert len(page.journeys) <= 2
        seen.extend(page.journeys)
        token = page.next_page_token
        if not token:
            break
    ids = [j.id for j in seen]
    assert len(ids) == len(set(ids))
    assert {j.id for j in created} <= set(ids)
    assert ids == sorted(ids)
    by_id = {j.id: j for j in seen}
    assert by_id[created[0].id] == created[0]


async def test_a_late_entry_older_than_a_known_exit_starts_nothing(decisioning: Decisioning) -> None:
    person, segment = uuid.uuid4(), await decisioning.segment()
    await create_journey(decisioning, segment, [c.CHANNEL_EMAIL])
    await grant(decisioning, person, c.CHANNEL_EMAIL)
    now = datetime.now(UTC)
    await decisioning.feed(
        segmentation_events.PersonExitedSegmentEvent(person_id=str(person), segment_id=str(segment)),
        event_type="segmentation.person_exited_segment",
        person_id=str(person),
        occurred_at=now,
    )
    late = await enter(decisioning, person, segment, at=now - timedelta(minutes=5))
    await decisioning.eventually("SELECT 1 FROM inbox WHERE event_id = :event", event=uuid.UUID(late.id))
    assert (
        await decisioning.scalar(
            "SELECT is_member FROM memberships WHERE person_id = :p AND segment_id = :s", p=person, s=segment
        )
        is False
    )
    assert await decisioning.scalar("SELECT count(*) FROM journey_runs WHERE person_id = :p", p=person) == 0


async def test_malformed_events_are_skipped_without_stopping_the_consumer(decisioning: Decisioning) -> None:
    segment = await decisioning.segment()
    await create_journey(decisioning, segment, [c.CHANNEL_EMAIL])
    bad = await decisioning.feed(
        segmentation_events.PersonEnteredSegmentEvent(person_id="not-a-uuid", segment_id=str(segment)),
        event_type="segmentation.person_entered_segment",
        person_id="not-a-uuid",
    )
    wrong_payload = await decisioning.feed(
        segmentation_events.PersonEnteredSegmentEvent(person_id=str(uuid.uuid4()), segment_id=str(segment)),
        event_type=contact.CONTACT_VERDICT_CHANGED,
        person_id="",
    )
    person = uuid.uuid4()
    marker = await enter(decisioning, person, segment)
    await decisioning.eventually("SELECT 1 FROM inbox WHERE event_id = :event", event=uuid.UUID(marker.id))
    assert await decisioning.scalar("SELECT 1 FROM inbox WHERE event_id = :e", e=uuid.UUID(bad.id)) == 1
    assert (
        await decisioning.scalar(
            "SELECT count(*) FROM journey_runs WHERE trigger_event_id = :e", e=uuid.UUID(bad.id)
        )
        == 0
    )
    # A payload of the wrong type is a bug upstream: retried, then dead-lettered, never applied.
    assert (
        await decisioning.scalar("SELECT 1 FROM inbox WHERE event_id = :e", e=uuid.UUID(wrong_payload.id))
        is None
    )
