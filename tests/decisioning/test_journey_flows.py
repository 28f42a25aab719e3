"""Multi-step journeys on a real decisioning (with the segmentation and gateway it asks at publish): the
lifecycle, entries and entry rules, every step kind, exits, pause and archive, and the run history."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest

from omni.common.v1 import common_pb2 as c
from omni.decisioning.v1 import decisioning_pb2 as d
from omni.segmentation.v1 import events_pb2 as segmentation_events
from omni_kit.errors import status_details

from .flows import message, publish, runs, seconds, sends, set_traits, template, track, until_runs
from .support import Decisioning
from .test_journeys import grant

ACTIVE = d.JourneyRun.RUN_STATE_ACTIVE
COMPLETED = d.JourneyRun.RUN_STATE_COMPLETED
EXITED = d.JourneyRun.RUN_STATE_EXITED


def cart_spec(email: str, sms: str, *, wait_s: float = 1.0) -> d.JourneySpec:
    """Abandoned cart keyed by cart id: email, wait for the order of that cart, SMS if it does not come."""
    return d.JourneySpec(
        entry=d.JourneyEntry(event=d.EventEntryTrigger(event_type="cart_abandoned")),
        entry_rule=d.EntryRule(frequency=d.EntryRule.FREQUENCY_EVERY_TIME, key_property="cart_id"),
        steps=[
            message("email", email, c.CHANNEL_EMAIL, next_step="wait-order"),
            d.JourneyStep(
                id="wait-order",
                wait_for_event=d.WaitForEventStep(
                    event_type="order_completed", match_key=True, timeout=seconds(wait_s), on_timeout="sms"
                ),
            ),
            message("sms", sms, c.CHANNEL_SMS),
        ],
        exit_criteria=[d.ExitCriterion(event_type="order_completed", match_key=True)],
    )


async def test_a_draft_is_published_as_immutable_versions_and_edits_make_the_next(
    decisioning: Decisioning,
) -> None:
    email = await template(decisioning, c.CHANNEL_EMAIL)
    sms = await template(decisioning, c.CHANNEL_SMS)
    spec = cart_spec(email, sms)
    created = (
        await decisioning.stub.CreateJourney(
            d.CreateJourneyRequest(journey=d.Journey(name="cart flow", spec=spec))
        )
    ).journey
    assert created.state == d.JOURNEY_STATE_DRAFT and created.version == 0 and created.has_draft
    assert created.spec == spec
    published = (
        await decisioning.stub.PublishJourney(d.PublishJourneyRequest(journey_id=created.id))
    ).journey
    assert (published.state, published.version, published.has_draft) == (d.JOURNEY_STATE_PUBLISHED, 1, False)

    edited = d.JourneySpec()
    edited.CopyFrom(spec)
    edited.steps[1].wait_for_event.timeout.CopyFrom(seconds(60))
    draft = (
        await decisioning.stub.UpdateJourneyDraft(
            d.UpdateJourneyDraftRequest(journey_id=created.id, spec=edited)
        )
    ).journey
    assert draft.has_draft and draft.state == d.JOURNEY_STATE_PUBLISHED
    # The published version runs on unchanged until the draft is published.
    current = (await decisioning.stub.GetJourney(d.GetJourneyRequest(journey_id=created.id))).journey
    assert current.version == 1 and current.spec == spec
    second = (await decisioning.stub.PublishJourney(d.PublishJourneyRequest(journey_id=created.id))).journey
    assert second.version == 2 and second.spec == edited
    first = (await decisioning.stub.GetJourney(d.GetJourneyRequest(journey_id=created.id, version=1))).journey
    assert first.spec == spec

    paused = (await decisioning.stub.PauseJourney(d.PauseJourneyRequest(journey_id=created.id))).journey
    assert paused.state == d.JOURNEY_STATE_PAUSED
    resumed = (await decisioning.stub.ResumeJourney(d.ResumeJourneyRequest(journey_id=created.id))).journey
    assert resumed.state == d.JOURNEY_STATE_PUBLISHED
    archived = (await decisioning.stub.ArchiveJourney(d.ArchiveJourneyRequest(journey_id=created.id))).journey
    assert archived.state == d.JOURNEY_STATE_ARCHIVED
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await decisioning.stub.UpdateJourneyDraft(
            d.UpdateJourneyDraftRequest(journey_id=created.id, spec=spec)
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    listed = (await decisioning.stub.ListJourneys(d.ListJourneysRequest(page_size=500))).journeys
    assert any(j.id == created.id and j.state == d.JOURNEY_STATE_ARCHIVED and j.version == 2 for j in listed)


async def test_publish_refuses_unknown_references_and_templates_without_the_channel(
    decisioning: Decisioning,
) -> None:
    email_only = await template(decisioning, c.CHANNEL_EMAIL)
    spec = d.JourneySpec(
        entry=d.JourneyEntry(segment=d.SegmentEntryTrigger(segment_id=str(uuid.uuid4()))),
        steps=[
            message("first", email_only, c.CHANNEL_EMAIL, c.CHANNEL_SMS, next_step="second"),
            message("second", "no-such-template", c.CHANNEL_EMAIL),
        ],
    )
    created = (
        await decisioning.stub.CreateJourney(
            d.CreateJourneyRequest(journey=d.Journey(name="broken refs", spec=spec))
        )
    ).journey
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await decisioning.stub.PublishJourney(d.PublishJourneyRequest(journey_id=created.id))
    details = status_details(refused.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == {
        "spec.entry.segment.segment_id",
        "spec.steps[0].message.template_id",
        "spec.steps[1].message.template_id",
    }
    still = (await decisioning.stub.GetJourney(d.GetJourneyRequest(journey_id=created.id))).journey
    assert still.state == d.JOURNEY_STATE_DRAFT and still.version == 0


async def test_a_graph_with_dangling_links_is_refused_with_field_violations(decisioning: Decisioning) -> None:
    spec = d.JourneySpec(
        entry=d.JourneyEntry(api=d.ApiEntryTrigger()),
        steps=[
            d.JourneyStep(id="a", wait=d.WaitStep(duration=seconds(1), next="nowhere")),
            d.JourneyStep(
                id="a",
                random_split=d.RandomSplitStep(
                    branches=[
                        d.RandomSplitStep.Branch(name="x", percent=30),
                        d.RandomSplitStep.Branch(name="y", percent=30),
                    ]
                ),
            ),
        ],
        exit_criteria=[d.ExitCriterion(event_type="order_completed", match_key=True)],
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await decisioning.stub.CreateJourney(
            d.CreateJourneyRequest(journey=d.Journey(name="dangling", spec=spec))
        )
    assert status_details(refused.value).fields == {
        "journey.spec.steps[1].id",
        "journey.spec.steps[0].wait.next",
        "journey.spec.steps[1].random_split.branches",
        "journey.spec.exit_criteria[0].match_key",
    }


async def test_abandoned_carts_run_per_cart_and_an_order_ends_only_its_own(decisioning: Decisioning) -> None:
    person = uuid.uuid4()
    await grant(decisioning, person, c.CHANNEL_EMAIL)
    await grant(decisioning, person, c.CHANNEL_SMS)
    email = await template(decisioning, c.CHANNEL_EMAIL)
    sms = await template(decisioning, c.CHANNEL_SMS)
    journey = await publish(decisioning, cart_spec(email, sms, wait_s=1.5))

    await track(decisioning, person, "cart_abandoned", cart_id="A")
    await track(decisioning, person, "cart_abandoned", cart_id="B")
    # The same cart again while its run goes on starts nothing.
    await track(decisioning, person, "cart_abandoned", cart_id="A")
    await until_runs(
        decisioning, person, lambda found: len([r for r in found if r.steps]) == 2, journey_id=journey.id
    )
    await track(decisioning, person, "order_completed", cart_id="A")

    found = await until_runs(
        decisioning, person, lambda found: all(r.state != ACTIVE for r in found) and len(found) == 2
    )
    by_key = {run.key: run for run in found}
    assert by_key["A"].state == EXITED and by_key["A"].end_reason == "exit criterion order_completed"
    assert by_key["B"].state == COMPLETED
    assert [(s.step_id, s.outcome) for s in by_key["B"].steps] == [
        ("email", "sent"),
        ("wait-order", "waiting"),
        ("wait-order", "timeout"),
        ("sms", "sent"),
    ]
    await asyncio.sleep(0.3)
    channels = sorted((s.channel, s.variables["key"]) for s in sends(decisioning, person))
    assert channels == [(c.CHANNEL_EMAIL, "A"), (c.CHANNEL_EMAIL, "B"), (c.CHANNEL_SMS, "B")]
    requests = [s.request_id for s in sends(decisioning, person)]
    assert len(set(requests)) == 3
    assert all(r.startswith("journey-run:") for r in requests)


async def test_waiting_for_an_event_takes_the_event_exit(decisioning: Decisioning) -> None:
    person = uuid.uuid4()
    spec = d.JourneySpec(
        entry=d.JourneyEntry(api=d.ApiEntryTrigger()),
        entry_rule=d.EntryRule(frequency=d.EntryRule.FREQUENCY_EVERY_TIME),
        steps=[
            d.JourneyStep(
                id="wait-login",
                wait_for_event=d.WaitForEventStep(
                    event_type="logged_in", timeout=seconds(30), on_event="done", on_timeout=""
                ),
            ),
            d.JourneyStep(id="done", exit=d.ExitStep()),
        ],
    )
    journey = await publish(decisioning, spec)
    started = await decisioning.stub.TriggerJourney(
        d.TriggerJourneyRequest(journey_id=journey.id, person_id=str(person), request_id="login-1")
    )
    assert started.run.id and not started.refusal
    await until_runs(decisioning, person, lambda found: found and found[0].steps)
    await track(decisioning, person, "logged_in")
    [run] = await until_runs(decisioning, person, lambda found: found[0].state == COMPLETED)
    assert [(s.step_id, s.outcome) for s in run.steps] == [
        ("wait-login", "waiting"),
        ("wait-login", "event"),
        ("done", "exit"),
    ]
    assert run.end_reason == "exit step"
    # The same request id again is the same run.
    again = await decisioning.stub.TriggerJourney(
        d.TriggerJourneyRequest(journey_id=journey.id, person_id=str(person), request_id="login-1")
    )
    assert again.run.id == started.run.id


async def test_entry_rules_once_ever_and_once_per_period(decisioning: Decisioning) -> None:
    person = uuid.uuid4()
    steps = [d.JourneyStep(id="end", exit=d.ExitStep())]
    once = await publish(
        decisioning, d.JourneySpec(entry=d.JourneyEntry(api=d.ApiEntryTrigger()), steps=steps)
    )
    period = await publish(
        decisioning,
        d.JourneySpec(
            entry=d.JourneyEntry(api=d.ApiEntryTrigger()),
            entry_rule=d.EntryRule(frequency=d.EntryRule.FREQUENCY_ONCE_PER_PERIOD, period=seconds(1)),
            steps=steps,
        ),
    )

    async def trigger(journey: d.Journey) -> d.TriggerJourneyResponse:
        response: d.TriggerJourneyResponse = await decisioning.stub.TriggerJourney(
            d.TriggerJourneyRequest(
                journey_id=journey.id, person_id=str(person), request_id=str(uuid.uuid4())
            )
        )
        await until_runs(decisioning, person, lambda found: all(r.state != ACTIVE for r in found))
        return response

    assert (await trigger(once)).run.id
    assert (await trigger(once)).refusal == "entered once already"
    assert (await trigger(period)).run.id
    assert (await trigger(period)).refusal.startswith("entered within the last")
    await asyncio.sleep(1.1)
    assert (await trigger(period)).run.id


async def test_splits_conditions_and_waits_are_recorded_with_their_reasons(decisioning: Decisioning) -> None:
    person = uuid.uuid4()
    await set_traits(decisioning, person, tier="gold")
    spec = d.JourneySpec(
        entry=d.JourneyEntry(api=d.ApiEntryTrigger()),
        entry_rule=d.EntryRule(frequency=d.EntryRule.FREQUENCY_EVERY_TIME),
        steps=[
            d.JourneyStep(
                id="split",
                random_split=d.RandomSplitStep(
                    branches=[
                        d.RandomSplitStep.Branch(name="control", percent=50, next="tier"),
                        d.RandomSplitStep.Branch(name="treatment", percent=50, next="tier"),
                    ]
                ),
            ),
            d.JourneyStep(
                id="tier",
                condition=d.ConditionStep(
                    trait=d.ConditionStep.TraitIs(trait="tier", equals="gold"), if_true="pause", if_false=""
                ),
            ),
            d.JourneyStep(id="pause", wait=d.WaitStep(duration=seconds(0.5), next="recent")),
            d.JourneyStep(
                id="recent",
                condition=d.ConditionStep(
                    event_in_window=d.ConditionStep.EventInWindow(
                        event_type="page_viewed", window=seconds(60)
                    ),
                    if_true="end",
                ),
            ),
            d.JourneyStep(id="end", exit=d.ExitStep()),
        ],
    )
    journey = await publish(decisioning, spec)
    await track(decisioning, person, "page_viewed")
    await asyncio.sleep(0.3)  # the traits and the event are applied by the consumer

    outcomes = []
    for attempt in range(3):
        await decisioning.stub.TriggerJourney(
            d.TriggerJourneyRequest(journey_id=journey.id, person_id=str(person), request_id=f"r{attempt}")
        )
        [run, *_] = await until_runs(decisioning, person, lambda found: found[0].state == COMPLETED)
        outcomes.append([(s.step_id, s.outcome) for s in run.steps])
    # The split is stable per person: the same branch every time.
    assert outcomes[0] == outcomes[1] == outcomes[2]
    branch = outcomes[0][0][1]
    assert branch in ("branch control", "branch treatment")
    assert outcomes[0] == [
        ("split", branch),
        ("tier", "true"),
        ("pause", "waiting"),
        ("recent", "true"),
        ("end", "exit"),
    ]
    # Across persons the split divides.
    branches = set()
    for _ in range(40):
        other = uuid.uuid4()
        await decisioning.stub.TriggerJourney(
            d.TriggerJourneyRequest(journey_id=journey.id, person_id=str(other), request_id=str(other))
        )
        [run] = await until_runs(decisioning, other, lambda found: found and found[0].steps)
        branches.add(run.steps[0].outcome)
    assert branches == {"branch control", "branch treatment"}


async def test_pause_stops_steps_at_once_and_resume_takes_them(decisioning: Decisioning) -> None:
    person = uuid.uuid4()
    await grant(decisioning, person, c.CHANNEL_EMAIL)
    email = await template(decisioning, c.CHANNEL_EMAIL)
    spec = d.JourneySpec(
        entry=d.JourneyEntry(api=d.ApiEntryTrigger()),
        steps=[
            d.JourneyStep(id="wait", wait=d.WaitStep(duration=seconds(0.5), next="mail")),
            message("mail", email, c.CHANNEL_EMAIL),
        ],
    )
    journey = await publish(decisioning, spec)
    await decisioning.stub.TriggerJourney(
        d.TriggerJourneyRequest(journey_id=journey.id, person_id=str(person), request_id="p1")
    )
    await until_runs(decisioning, person, lambda found: found and found[0].steps)
    await decisioning.stub.PauseJourney(d.PauseJourneyRequest(journey_id=journey.id))
    await asyncio.sleep(1.5)
    [run] = await runs(decisioning, person)
    assert run.state == ACTIVE and run.current_step == "mail"
    assert sends(decisioning, person) == []
    # Paused, no one enters either.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await decisioning.stub.TriggerJourney(
            d.TriggerJourneyRequest(journey_id=journey.id, person_id=str(uuid.uuid4()), request_id="p2")
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await decisioning.stub.ResumeJourney(d.ResumeJourneyRequest(journey_id=journey.id))
    [run] = await until_runs(decisioning, person, lambda found: found[0].state == COMPLETED)
    await asyncio.sleep(0.3)
    assert [s.channel for s in sends(decisioning, person)] == [c.CHANNEL_EMAIL]


async def test_archive_ends_waiting_runs(decisioning: Decisioning) -> None:
    person = uuid.uuid4()
    spec = d.JourneySpec(
        entry=d.JourneyEntry(api=d.ApiEntryTrigger()),
        steps=[d.JourneyStep(id="long", wait=d.WaitStep(duration=seconds(3600)))],
    )
    journey = await publish(decisioning, spec)
    await decisioning.stub.TriggerJourney(
        d.TriggerJourneyRequest(journey_id=journey.id, person_id=str(person), request_id="a1")
    )
    await until_runs(decisioning, person, lambda found: found and found[0].steps)
    await decisioning.stub.ArchiveJourney(d.ArchiveJourneyRequest(journey_id=journey.id))
    [run] = await runs(decisioning, person)
    assert run.state == EXITED and run.end_reason == "journey archived"
    jobs = await decisioning.scalar("SELECT count(*) FROM scheduled_jobs WHERE key = :key", key=run.id)
    assert jobs == 0
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await decisioning.stub.TriggerJourney(
            d.TriggerJourneyRequest(journey_id=journey.id, person_id=str(person), request_id="a2")
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_journey_published_after_its_segment_filled_can_enter_those_already_in_it(
    decisioning: Decisioning,
) -> None:
    segment = await decisioning.segment()
    members = [uuid.uuid4() for _ in range(3)]
    for person in members:
        await decisioning.feed(
            segmentation_events.PersonEnteredSegmentEvent(person_id=str(person), segment_id=str(segment)),
            event_type="segmentation.person_entered_segment",
            person_id=str(person),
        )
    await decisioning.eventually(
        "SELECT count(*) = 3 FROM memberships WHERE segment_id = :segment AND is_member", segment=segment
    )
    steps = [d.JourneyStep(id="end", exit=d.ExitStep())]
    entry = d.JourneyEntry(segment=d.SegmentEntryTrigger(segment_id=str(segment)))
    await publish(decisioning, d.JourneySpec(entry=entry, steps=steps, enter_existing_members=True))
    await publish(decisioning, d.JourneySpec(entry=entry, steps=steps))
    for person in members:
        found = await until_runs(decisioning, person, lambda found: found and found[0].state == COMPLETED)
        assert len(found) == 1  # only the journey that asked for existing members
    # A later entry starts both.
    late = uuid.uuid4()
    await decisioning.feed(
        segmentation_events.PersonEnteredSegmentEvent(person_id=str(late), segment_id=str(segment)),
        event_type="segmentation.person_entered_segment",
        person_id=str(late),
    )
    await until_runs(decisioning, late, lambda found: len(found) == 2)
