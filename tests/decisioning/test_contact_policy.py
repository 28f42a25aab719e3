"""The contact policy's caps on marketing messages: counted across journeys and the gateway's sends, per
calendar day or week in the workspace's time zone or per rolling period; transactional sends exempt."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from omni.common.v1 import common_pb2 as c
from omni.events.v1 import envelope_pb2
from omni.gateway.v1 import events_pb2 as gateway_events
from omni.gateway.v1 import gateway_pb2
from omni.profile.v1 import profile_pb2 as p
from omni_decisioning.contact_policy import Cap, Contact, earliest_start, reached_cap
from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres

from .conftest import decisioning_with_neighbours
from .support import Decisioning
from .test_journeys import create_journey, enter, grant, run_outcome

BERLIN = ZoneInfo("Europe/Berlin")


@pytest.fixture(scope="module")
async def decisioning(postgres: EmbeddedPostgres, nats_server: EmbeddedNats) -> AsyncIterator[Decisioning]:
    """Decisioning with two caps: two marketing messages a calendar week, and one SMS a day."""
    caps = [{"max_messages": 2, "period": "week"}, {"max_messages": 1, "period": "day", "channel": "sms"}]
    async for running in decisioning_with_neighbours(
        postgres, nats_server, contact_caps=caps, time_zone="Europe/Berlin"
    ):
        yield running


# -- the rules ------------------------------------------------------------------------------------------


def test_a_calendar_day_starts_at_local_midnight() -> None:
    cap = Cap(max_messages=1, period="day")
    # 23:30 in Berlin (winter, UTC+1) is 22:30 UTC; the day began at 23:00 UTC the day before.
    now = datetime(2027, 1, 14, 22, 30, tzinfo=UTC)
    assert cap.window_start(now, BERLIN) == datetime(2027, 1, 13, 23, 0, tzinfo=UTC)
    # Half an hour later it is the next day there: yesterday's send no longer counts.
    later = now + timedelta(minutes=45)
    sent = [Contact(channel=c.CHANNEL_EMAIL, at=now - timedelta(minutes=5))]
    assert reached_cap([cap], sent, c.CHANNEL_EMAIL, now, BERLIN) == cap
    assert reached_cap([cap], sent, c.CHANNEL_EMAIL, later, BERLIN) is None


def test_a_calendar_week_starts_on_monday_and_a_rolling_week_does_not() -> None:
    wednesday = datetime(2027, 1, 13, 12, 0, tzinfo=UTC)
    assert Cap(2, "week").window_start(wednesday, BERLIN) == datetime(2027, 1, 10, 23, 0, tzinfo=UTC)
    assert Cap(2, "7d").window_start(wednesday, BERLIN) == wednesday - timedelta(days=7)
    # Across the spring DST change (Sunday 28 March 2027), Monday midnight is UTC+2.
    tuesday = datetime(2027, 3, 30, 12, 0, tzinfo=UTC)
    assert Cap(2, "week").window_start(tuesday, BERLIN) == datetime(2027, 3, 28, 22, 0, tzinfo=UTC)


def test_a_channel_cap_counts_that_channel_only() -> None:
    now = datetime(2027, 1, 13, 12, 0, tzinfo=UTC)
    sms = Cap(1, "day", channel=c.CHANNEL_SMS)
    emails = [Contact(c.CHANNEL_EMAIL, now - timedelta(hours=1))]
    assert reached_cap([sms], emails, c.CHANNEL_SMS, now, BERLIN) is None
    assert reached_cap([sms], emails, c.CHANNEL_EMAIL, now, BERLIN) is None
    texts = [Contact(c.CHANNEL_SMS, now - timedelta(hours=1))]
    assert reached_cap([sms], texts, c.CHANNEL_SMS, now, BERLIN) == sms
    assert earliest_start([sms, Cap(2, "30d")], now, BERLIN) == now - timedelta(days=30)
    assert earliest_start([], now, BERLIN) is None


# -- through journeys and the event log -------------------------------------------------------------------


async def test_no_third_marketing_message_in_a_week_from_any_journey(decisioning: Decisioning) -> None:
    person = uuid.uuid4()
    await grant(decisioning, person, c.CHANNEL_EMAIL)
    outcomes = []
    for _ in range(3):
        segment = await decisioning.segment()
        await create_journey(decisioning, segment, [c.CHANNEL_EMAIL])
        outcomes.append(await run_outcome(decisioning, await enter(decisioning, person, segment)))
    assert outcomes == ["send_requested", "send_requested", "capped"]
    assert await logged(decisioning, person) == 2


async def test_journeys_triggered_together_count_each_other(decisioning: Decisioning) -> None:
    person, segment = uuid.uuid4(), await decisioning.segment()
    await grant(decisioning, person, c.CHANNEL_EMAIL)
    for _ in range(3):
        await create_journey(decisioning, segment, [c.CHANNEL_EMAIL])
    entry = await enter(decisioning, person, segment)
    await run_outcome(decisioning, entry)
    outcomes = await decisioning.rows(
        "SELECT outcome, count(*) AS n FROM journey_runs WHERE trigger_event_id = :event GROUP BY outcome",
        event=uuid.UUID(entry.id),
    )
    assert {row.outcome: row.n for row in outcomes} == {"send_requested": 2, "capped": 1}


async def test_the_gateways_sends_count_and_transactional_ones_and_failures_do_not(
    decisioning: Decisioning,
) -> None:
    person = uuid.uuid4()
    await grant(decisioning, person, c.CHANNEL_SMS)
    # A transactional SMS (a receipt) and a marketing SMS that failed: neither counts.
    await gateway_sent(decisioning, person, c.CHANNEL_SMS, p.CONSENT_PURPOSE_TRANSACTIONAL)
    failed = await gateway_sent(decisioning, person, c.CHANNEL_SMS, p.CONSENT_PURPOSE_MARKETING)
    assert await logged(decisioning, person) == 1
    await applied(
        decisioning,
        await decisioning.feed(
            gateway_events.MessageFailedEvent(message=failed),
            event_type="gateway.message_failed",
            person_id=str(person),
        ),
    )
    assert await logged(decisioning, person) == 0
    segment = await decisioning.segment()
    await create_journey(decisioning, segment, [c.CHANNEL_SMS])
    assert await run_outcome(decisioning, await enter(decisioning, person, segment)) == "send_requested"

    # A marketing SMS sent through SendMessage by another caller counts against the SMS cap of a day.
    other = uuid.uuid4()
    await grant(decisioning, other, c.CHANNEL_SMS)
    await gateway_sent(decisioning, other, c.CHANNEL_SMS, p.CONSENT_PURPOSE_MARKETING)
    assert await logged(decisioning, other) == 1
    segment = await decisioning.segment()
    await create_journey(decisioning, segment, [c.CHANNEL_SMS])
    assert await run_outcome(decisioning, await enter(decisioning, other, segment)) == "capped"


async def test_a_capped_channel_does_not_cap_another(decisioning: Decisioning) -> None:
    person = uuid.uuid4()
    await grant(decisioning, person, c.CHANNEL_SMS)
    await grant(decisioning, person, c.CHANNEL_EMAIL)
    sms_segment, email_segment = await decisioning.segment(), await decisioning.segment()
    await create_journey(decisioning, sms_segment, [c.CHANNEL_SMS])
    await create_journey(decisioning, email_segment, [c.CHANNEL_EMAIL])
    assert await run_outcome(decisioning, await enter(decisioning, person, sms_segment)) == "send_requested"
    # The second journey: email is under its caps (one marketing message this week so far).
    assert await run_outcome(decisioning, await enter(decisioning, person, email_segment)) == "send_requested"


async def gateway_sent(
    decisioning: Decisioning,
    person: uuid.UUID,
    channel: c.Channel.ValueType,
    purpose: p.ConsentPurpose.ValueType,
) -> gateway_pb2.Message:
    now = Timestamp()
    now.GetCurrentTime()
    message = gateway_pb2.Message(
        id=str(uuid.uuid4()),
        request_id=f"caller-{uuid.uuid4()}",
        person_id=str(person),
        channel=channel,
        status=gateway_pb2.MESSAGE_STATUS_SENT,
        purpose=purpose,
        update_time=now,
    )
    await applied(
        decisioning,
        await decisioning.feed(
            gateway_events.MessageSentEvent(message=message),
            event_type="gateway.message_sent",
            person_id=str(person),
        ),
    )
    return message


async def logged(decisioning: Decisioning, person: uuid.UUID) -> int:
    count: int = await decisioning.scalar("SELECT count(*) FROM contact_log WHERE person_id = :p", p=person)
    return count


async def applied(decisioning: Decisioning, envelope: envelope_pb2.Envelope) -> None:
    """Wait until decisioning's consumer has handled an event it was fed."""
    await decisioning.eventually("SELECT true FROM inbox WHERE event_id = :id", id=uuid.UUID(envelope.id))
