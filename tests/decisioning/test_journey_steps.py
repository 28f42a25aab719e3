"""Multi-step journeys' steps in detail on a real decisioning: contact caps holding or skipping a message,
the decide step's offer in the message, versions (finish or move), waits until a local time or a trait's
date, campaigns to a segment at a speed limit and in local time, and the pure rules behind them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from omni.common.v1 import common_pb2 as c
from omni.decisioning.v1 import decisioning_pb2 as d
from omni.segmentation.v1 import events_pb2 as segmentation_events
from omni_decisioning.orchestration.steps import bucket, choose_branch, next_time_of_day, trait_instant
from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres
from omni_kit.errors import status_details

from .conftest import decisioning_with_neighbours
from .flows import message, publish, runs, seconds, sends, set_traits, template, until_runs
from .support import Decisioning
from .test_journeys import grant

ACTIVE = d.JourneyRun.RUN_STATE_ACTIVE
COMPLETED = d.JourneyRun.RUN_STATE_COMPLETED
API = d.JourneyEntry(api=d.ApiEntryTrigger())


@pytest.fixture(scope="module")
async def capped(postgres: EmbeddedPostgres, nats_server: EmbeddedNats) -> AsyncIterator[Decisioning]:
    """Decisioning with a cap of one marketing message per day."""
    async for running in decisioning_with_neighbours(
        postgres, nats_server, contact_caps=[{"max_messages": 1, "period": "day"}]
    ):
        yield running


async def trigger(
    decisioning: Decisioning, journey: d.Journey, person: uuid.UUID
) -> d.TriggerJourneyResponse:
    response: d.TriggerJourneyResponse = await decisioning.stub.TriggerJourney(
        d.TriggerJourneyRequest(journey_id=journey.id, person_id=str(person), request_id=str(uuid.uuid4()))
    )
    return response


@pytest.mark.parametrize("action", [d.MessageStep.CAP_ACTION_SKIP, d.MessageStep.CAP_ACTION_HOLD])
async def test_a_capped_message_is_skipped_or_held_as_configured_and_the_cap_recorded(
    capped: Decisioning, action: d.MessageStep.CapAction.ValueType
) -> None:
    person = uuid.uuid4()
    await grant(capped, person, c.CHANNEL_EMAIL)
    email = await template(capped, c.CHANNEL_EMAIL)
    spec = d.JourneySpec(
        entry=API,
        steps=[
            message("first", email, c.CHANNEL_EMAIL, next_step="second"),
            message("second", email, c.CHANNEL_EMAIL, on_cap=action, hold_for=seconds(0.3)),
        ],
    )
    journey = await publish(capped, spec)
    await asyncio.sleep(0.3)  # the verdict is applied
    await trigger(capped, journey, person)
    if action == d.MessageStep.CAP_ACTION_SKIP:
        [run] = await until_runs(capped, person, lambda found: found and found[0].state == COMPLETED)
        assert [(s.step_id, s.outcome) for s in run.steps] == [("first", "sent"), ("second", "skipped")]
    else:
        [run] = await until_runs(capped, person, lambda found: found and len(found[0].steps) >= 3)
        assert run.state == ACTIVE and run.current_step == "second"
        assert [(s.step_id, s.outcome) for s in run.steps[:3]] == [
            ("first", "sent"),
            ("second", "held"),
            ("second", "held"),
        ]
    assert "at most 1 marketing messages per calendar day reached" in run.steps[1].detail
    await asyncio.sleep(0.2)
    assert len(sends(capped, person)) == 1


async def test_the_decide_step_passes_the_offer_to_the_message(decisioning: Decisioning) -> None:
    person = uuid.uuid4()
    await grant(decisioning, person, c.CHANNEL_EMAIL)
    touchpoint = f"winback-{uuid.uuid4().hex[:6]}"
    await decisioning.stub.CreateOffer(
        d.CreateOfferRequest(
            offer=d.Offer(
                name=f"ten-off-{touchpoint}", description="10% off", touchpoints=[touchpoint], priority=5
            )
        )
    )
    email = await template(decisioning, c.CHANNEL_EMAIL)
    spec = d.JourneySpec(
        entry=API,
        steps=[
            d.JourneyStep(id="pick", decide=d.DecideStep(touchpoint=touchpoint, next="mail")),
            message("mail", email, c.CHANNEL_EMAIL),
        ],
    )
    journey = await publish(decisioning, spec)
    await asyncio.sleep(0.3)
    await trigger(decisioning, journey, person)
    [run] = await until_runs(decisioning, person, lambda found: found and found[0].state == COMPLETED)
    assert run.steps[0].outcome == f"offer ten-off-{touchpoint}"
    await decisioning.published.wait_for(
        lambda e: e.person_id == str(person) and e.type == "decisioning.send_requested"
    )
    [send] = sends(decisioning, person)
    assert send.variables["offer"]["description"] == "10% off"


@pytest.mark.parametrize(
    ("policy", "expected_version"),
    [
        (d.JourneySpec.VERSION_POLICY_FINISH_ON_VERSION, 1),
        (d.JourneySpec.VERSION_POLICY_MOVE_AT_NEXT_STEP, 2),
    ],
)
async def test_runs_finish_on_their_version_or_move_at_their_next_step(
    decisioning: Decisioning, policy: d.JourneySpec.VersionPolicy.ValueType, expected_version: int
) -> None:
    person = uuid.uuid4()
    await grant(decisioning, person, c.CHANNEL_EMAIL)
    first, second = await template(decisioning, c.CHANNEL_EMAIL), await template(decisioning, c.CHANNEL_EMAIL)

    def spec(template_id: str) -> d.JourneySpec:
        return d.JourneySpec(
            entry=API,
            version_policy=policy,
            steps=[
                d.JourneyStep(id="wait", wait=d.WaitStep(duration=seconds(1), next="mail")),
                message("mail", template_id, c.CHANNEL_EMAIL),
            ],
        )

    journey = await publish(decisioning, spec(first))
    await asyncio.sleep(0.3)
    await trigger(decisioning, journey, person)
    await until_runs(decisioning, person, lambda found: found and found[0].steps)
    await decisioning.stub.UpdateJourneyDraft(
        d.UpdateJourneyDraftRequest(journey_id=journey.id, spec=spec(second))
    )
    await decisioning.stub.PublishJourney(d.PublishJourneyRequest(journey_id=journey.id))
    [run] = await until_runs(decisioning, person, lambda found: found[0].state == COMPLETED)
    assert run.version == expected_version
    await asyncio.sleep(0.2)
    assert [s.template_id for s in sends(decisioning, person)] == [first if expected_version == 1 else second]


async def test_waits_until_a_local_time_of_day_and_a_traits_date(decisioning: Decisioning) -> None:
    person = uuid.uuid4()
    renewal = (datetime.now(UTC) + timedelta(days=3)).date()
    await set_traits(decisioning, person, time_zone="Asia/Tokyo", renewal_date=renewal.isoformat())
    spec = d.JourneySpec(
        entry=API,
        entry_rule=d.EntryRule(frequency=d.EntryRule.FREQUENCY_EVERY_TIME),
        steps=[
            d.JourneyStep(
                id="ten",
                wait=d.WaitStep(time_of_day=d.WaitStep.TimeOfDay(hour=10, minute=0), next="before-renewal"),
            ),
            d.JourneyStep(
                id="before-renewal",
                wait=d.WaitStep(
                    trait_date=d.WaitStep.TraitDate(trait="renewal_date", offset=seconds(-86400))
                ),
            ),
        ],
    )
    journey = await publish(decisioning, spec)
    await asyncio.sleep(0.3)
    await trigger(decisioning, journey, person)
    [run] = await until_runs(decisioning, person, lambda found: found and found[0].steps)
    tokyo = ZoneInfo("Asia/Tokyo")
    due = run.due_time.ToDatetime(tzinfo=UTC)
    assert due.astimezone(tokyo).time().isoformat() == "10:00:00"
    assert timedelta(0) < due - datetime.now(UTC) <= timedelta(days=1)
    assert run.current_step == "before-renewal"
    # The second wait, computed when it is reached, is a day before the renewal's midnight in Tokyo.
    assert trait_instant(renewal.isoformat(), tokyo) == datetime(
        renewal.year, renewal.month, renewal.day, tzinfo=tokyo
    ).astimezone(UTC)


async def _members(decisioning: Decisioning, segment: uuid.UUID, count: int) -> list[uuid.UUID]:
    persons = [uuid.uuid4() for _ in range(count)]
    for person in persons:
        await grant(decisioning, person, c.CHANNEL_EMAIL)
        await decisioning.feed(
            segmentation_events.PersonEnteredSegmentEvent(person_id=str(person), segment_id=str(segment)),
            event_type="segmentation.person_entered_segment",
            person_id=str(person),
        )
    await decisioning.eventually(
        "SELECT count(*) = :n FROM memberships WHERE segment_id = :segment AND is_member",
        segment=segment,
        n=count,
    )
    return persons


async def test_a_campaign_reaches_everyone_in_the_segment_at_its_speed_limit(
    decisioning: Decisioning,
) -> None:
    segment = await decisioning.segment()
    persons = await _members(decisioning, segment, 5)
    email = await template(decisioning, c.CHANNEL_EMAIL)
    spec = d.JourneySpec(
        entry=d.JourneyEntry(campaign=d.CampaignEntryTrigger(segment_id=str(segment), per_minute=120)),
        steps=[message("mail", email, c.CHANNEL_EMAIL)],
    )
    await publish(decisioning, spec)
    times = []
    for person in persons:
        [run] = await until_runs(decisioning, person, lambda found: found and found[0].state == COMPLETED)
        times.append(run.steps[0].time.ToDatetime(tzinfo=UTC))
    times.sort()
    # 120 a minute: one every half second, so five take two seconds (less the first one's lateness in being
    # taken, which the others need not share).
    assert times[-1] - times[0] >= timedelta(seconds=1.5)
    assert all(len(sends(decisioning, person)) == 1 for person in persons)


async def test_a_campaign_in_local_time_starts_each_persons_run_at_their_own_clock(
    decisioning: Decisioning,
) -> None:
    segment = await decisioning.segment()
    east, west = await _members(decisioning, segment, 2)
    await set_traits(
        decisioning, east, time_zone="Etc/GMT-2"
    )  # UTC+2: the wall-clock time passed 2 hours ago
    await set_traits(decisioning, west, time_zone="Etc/GMT+2")  # UTC-2: it comes in 2 hours
    await asyncio.sleep(0.3)
    email = await template(decisioning, c.CHANNEL_EMAIL)
    start = Timestamp()
    start.FromDatetime(datetime.now(UTC) + timedelta(seconds=30))
    spec = d.JourneySpec(
        entry=d.JourneyEntry(
            campaign=d.CampaignEntryTrigger(segment_id=str(segment), start_time=start, local_time=True)
        ),
        steps=[message("mail", email, c.CHANNEL_EMAIL)],
    )
    await publish(decisioning, spec)
    await until_runs(decisioning, east, lambda found: found and found[0].state == COMPLETED)
    [run] = await until_runs(decisioning, west, lambda found: len(found) == 1)
    assert run.state == ACTIVE and not run.steps
    due = run.due_time.ToDatetime(tzinfo=UTC)
    expected = start.ToDatetime(tzinfo=UTC) + timedelta(hours=2)
    assert abs(due - expected) < timedelta(seconds=1)


async def test_bad_requests_name_their_fields(decisioning: Decisioning) -> None:
    for call, field in (
        (decisioning.stub.GetJourney(d.GetJourneyRequest(journey_id="nope")), "journey_id"),
        (
            decisioning.stub.TriggerJourney(
                d.TriggerJourneyRequest(journey_id=str(uuid.uuid4()), person_id="x")
            ),
            "person_id",
        ),
        (
            decisioning.stub.ListPersonJourneyRuns(
                d.ListPersonJourneyRunsRequest(person_id=str(uuid.uuid4()), page_token="garbage")
            ),
            "page_token",
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        details = status_details(refused.value)
        assert details.code == grpc.StatusCode.INVALID_ARGUMENT
        assert field in details.fields
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await decisioning.stub.GetJourney(d.GetJourneyRequest(journey_id=str(uuid.uuid4())))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert await runs(decisioning, uuid.uuid4()) == []


def test_next_time_of_day_keeps_to_weekdays_and_wall_clock_across_a_dst_change() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    # Saturday 28 March 2026, 12:00 in Berlin; the clocks go forward that night.
    now = datetime(2026, 3, 28, 11, 0, tzinfo=UTC)
    at_ten = next_time_of_day(now, d.WaitStep.TimeOfDay(hour=10), berlin)
    assert at_ten == datetime(2026, 3, 29, 10, 0, tzinfo=berlin).astimezone(UTC)
    assert at_ten == datetime(2026, 3, 29, 8, 0, tzinfo=UTC)  # summer time: UTC+2
    monday = next_time_of_day(now, d.WaitStep.TimeOfDay(hour=9, minute=30, weekdays=[1]), berlin)
    assert monday.astimezone(berlin).isoformat() == "2026-03-30T09:30:00+02:00"
    later_today = next_time_of_day(now, d.WaitStep.TimeOfDay(hour=18), berlin)
    assert later_today.astimezone(berlin).date() == date(2026, 3, 28)


def test_random_split_buckets_are_stable_and_spread() -> None:
    journey = uuid.uuid4()
    person = uuid.uuid4()
    assert bucket(journey, "split", person) == bucket(journey, "split", person)
    counts = [0] * 100
    for _ in range(20_000):
        counts[bucket(journey, "split", uuid.uuid4())] += 1
    assert min(counts) > 120 and max(counts) < 290  # about 200 each
    split = d.RandomSplitStep(
        branches=[
            d.RandomSplitStep.Branch(name="a", percent=10),
            d.RandomSplitStep.Branch(name="b", percent=90),
        ]
    )
    assert [choose_branch(split, v).name for v in (0, 9, 10, 99)] == ["a", "a", "b", "b"]
