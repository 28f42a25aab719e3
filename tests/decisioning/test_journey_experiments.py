"""Experiments in multi-step journeys on a real decisioning (gRPC, JetStream, PostgreSQL, and the gateway and
segmentation it asks at creates): a message step asks Experiments.assign as the one-message journey does; the
arm's template goes out, a holdout or the global control group sends nothing and the run history says so, the
run goes on, and a person is exposed only when they reach the step."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf.struct_pb2 import Value

from omni.common.v1 import common_pb2 as c
from omni.decisioning.v1 import decisioning_pb2 as d
from omni.decisioning.v1 import experiments_pb2 as x
from omni.decisioning.v1 import experiments_pb2_grpc, reports_pb2_grpc
from omni.decisioning.v1 import reports_pb2 as r
from omni_decisioning.experiments.assignment import choose_arm, in_global_control
from omni_decisioning.experiments.entities import Arm
from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres
from omni_kit.errors import status_details

from .conftest import decisioning_with_neighbours
from .flows import message, publish, seconds, sends, template, track, until_runs
from .support import Decisioning
from .test_journeys import grant

COMPLETED = d.JourneyRun.RUN_STATE_COMPLETED
EXITED = d.JourneyRun.RUN_STATE_EXITED
API = d.JourneyEntry(api=d.ApiEntryTrigger())
GLOBAL_CONTROL_SALT = "journey-experiments"


def _stubs(
    decisioning: Decisioning,
) -> tuple[experiments_pb2_grpc.ExperimentServiceStub, reports_pb2_grpc.ReportServiceStub]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{decisioning.runtime.port}")
    return experiments_pb2_grpc.ExperimentServiceStub(channel), reports_pb2_grpc.ReportServiceStub(channel)


async def _definition(reports: reports_pb2_grpc.ReportServiceStub) -> str:
    response = await reports.CreateConversionDefinition(
        r.CreateConversionDefinitionRequest(
            definition=r.ConversionDefinition(
                name=f"purchase-{uuid.uuid4().hex[:8]}",
                event_type="order_completed",
                filters=[
                    r.ConversionFilter(
                        path="total", operator=r.FILTER_OPERATOR_GREATER, value=Value(number_value=0)
                    )
                ],
                window_s=86_400,
                revenue_property="total",
                currency="EUR",
            )
        )
    )
    return response.definition.id


async def _started(
    experiments: experiments_pb2_grpc.ExperimentServiceStub,
    attachment: x.ExperimentAttachment,
    arms: list[x.ExperimentArm],
    definition: str,
) -> x.Experiment:
    created = await experiments.CreateExperiment(
        x.CreateExperimentRequest(
            experiment=x.Experiment(
                name=f"steps-{uuid.uuid4().hex[:8]}",
                attachment=attachment,
                arms=arms,
                conversion_definition_id=definition,
            )
        )
    )
    started = await experiments.StartExperiment(x.StartExperimentRequest(experiment_id=created.experiment.id))
    return started.experiment


def _arm_of(experiment: x.Experiment, person: uuid.UUID) -> Arm:
    arms = [Arm(a.name, a.allocation_percent, a.holdout, a.template_id) for a in experiment.arms]
    return choose_arm(uuid.UUID(experiment.id), arms, person)


async def _sent_templates(decisioning: Decisioning, person: uuid.UUID, count: int) -> list[str]:
    """The templates of the person's send requests, once `count` of them are published (and a moment after,
    so one too many would show)."""
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        if len(sends(decisioning, person)) >= count or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.1)
    return [send.template_id for send in sends(decisioning, person)]


async def _trigger(decisioning: Decisioning, journey: d.Journey, person: uuid.UUID) -> None:
    await decisioning.stub.TriggerJourney(
        d.TriggerJourneyRequest(journey_id=journey.id, person_id=str(person), request_id=str(uuid.uuid4()))
    )


async def test_a_step_experiment_and_a_journey_experiment_split_a_multi_step_journey(
    decisioning: Decisioning,
) -> None:
    experiments, reports = _stubs(decisioning)
    definition = await _definition(reports)
    subject_a = await template(decisioning, c.CHANNEL_EMAIL)
    subject_b = await template(decisioning, c.CHANNEL_EMAIL)
    reminder = await template(decisioning, c.CHANNEL_EMAIL)
    # Email, wait, reminder email; a purchase ends the run.
    spec = d.JourneySpec(
        entry=API,
        exit_criteria=[d.ExitCriterion(event_type="order_completed")],
        steps=[
            message("first", subject_a, c.CHANNEL_EMAIL, next_step="pause"),
            d.JourneyStep(id="pause", wait=d.WaitStep(duration=seconds(1.0), next="reminder")),
            message("reminder", reminder, c.CHANNEL_EMAIL),
        ],
    )
    journey = await publish(decisioning, spec)

    # Only a message step of an existing journey can carry an experiment; a step id must be one.
    for journey_id, step_id, code, why in (
        (journey.id, "pause", grpc.StatusCode.NOT_FOUND, "JOURNEY_STEP_NOT_FOUND"),
        (journey.id, "nowhere", grpc.StatusCode.NOT_FOUND, "JOURNEY_STEP_NOT_FOUND"),
        (str(uuid.uuid4()), "first", grpc.StatusCode.NOT_FOUND, "JOURNEY_NOT_FOUND"),
        (journey.id, "First Step", grpc.StatusCode.INVALID_ARGUMENT, ""),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await experiments.CreateExperiment(
                x.CreateExperimentRequest(
                    experiment=x.Experiment(
                        name=f"no-step-{uuid.uuid4().hex[:6]}",
                        attachment=x.ExperimentAttachment(
                            journey_step=x.ExperimentJourneyStep(journey_id=journey_id, step_id=step_id)
                        ),
                        arms=[
                            x.ExperimentArm(name="a", allocation_percent=50, control=True),
                            x.ExperimentArm(name="h", allocation_percent=50, holdout=True),
                        ],
                        conversion_definition_id=definition,
                    )
                )
            )
        assert caught.value.code() == code
        details = status_details(caught.value)
        if why:
            assert details.error_info is not None and details.error_info.reason == why
        else:
            fields = {v.field for v in details.field_violations}
            assert fields == {"experiment.attachment.journey_step.step_id"}

    # The subject-line test on the first step; a holdout of the whole journey's messages beside it (the step's
    # own experiment wins at the first step, so the journey's decides the reminder).
    on_step = await _started(
        experiments,
        x.ExperimentAttachment(journey_step=x.ExperimentJourneyStep(journey_id=journey.id, step_id="first")),
        [
            x.ExperimentArm(name="subject_a", allocation_percent=40, template_id=subject_a, control=True),
            x.ExperimentArm(name="subject_b", allocation_percent=40, template_id=subject_b),
            x.ExperimentArm(name="holdout", allocation_percent=20, holdout=True),
        ],
        definition,
    )
    assert on_step.attachment.journey_step.step_id == "first"
    assert on_step.attachment.journey_step.journey_id == journey.id
    on_journey = await _started(
        experiments,
        x.ExperimentAttachment(journey_id=journey.id),
        [
            x.ExperimentArm(name="reminded", allocation_percent=50, control=True),
            x.ExperimentArm(name="no_reminder", allocation_percent=50, holdout=True),
        ],
        definition,
    )

    # Persons enough for every arm of the step's experiment (assignment is a pure hash, known in advance).
    persons: list[uuid.UUID] = []
    per_arm: Counter[str] = Counter()
    while min(per_arm[name] for name in ("subject_a", "subject_b", "holdout")) < 3:
        person = uuid.uuid4()
        persons.append(person)
        per_arm[_arm_of(on_step, person).name] += 1
    # One more person buys during the wait: exposed at the first step, never at the reminder.
    buyer = uuid.uuid4()
    for person in [*persons, buyer]:
        await grant(decisioning, person, c.CHANNEL_EMAIL)
    await asyncio.sleep(0.3)  # the verdicts are applied
    for person in [*persons, buyer]:
        await _trigger(decisioning, journey, person)
    await until_runs(decisioning, buyer, lambda found: found and len(found[0].steps) >= 2)
    await track(decisioning, buyer, "order_completed", total=12.5)

    for person in persons:
        [run] = await until_runs(
            decisioning, person, lambda found: found and found[0].state == COMPLETED, within_s=30
        )
        first, pause, last = run.steps
        step_arm = _arm_of(on_step, person)
        if step_arm.holdout:
            assert (first.step_id, first.outcome) == ("first", "holdout")
            assert f"experiment {on_step.id}, arm holdout: nothing sent" in first.detail
        else:
            assert (first.step_id, first.outcome) == ("first", "sent")
            assert f"template {step_arm.template_id}" in first.detail
            assert f"experiment {on_step.id} arm {step_arm.name}" in first.detail
        assert (pause.step_id, pause.outcome) == ("pause", "waiting")
        journey_arm = _arm_of(on_journey, person)
        if journey_arm.holdout:
            assert (last.step_id, last.outcome) == ("reminder", "holdout")
            assert f"experiment {on_journey.id}, arm no_reminder" in last.detail
        else:
            assert (last.step_id, last.outcome) == ("reminder", "sent")
            assert f"template {reminder}" in last.detail
        expected = [] if step_arm.holdout else [step_arm.template_id]
        expected += [] if journey_arm.holdout else [reminder]
        sent = await _sent_templates(decisioning, person, len(expected))
        assert sorted(sent) == sorted(expected), (person, sent, expected)
    [run] = await until_runs(decisioning, buyer, lambda found: found and found[0].state == EXITED)
    assert [s.step_id for s in run.steps][:2] == ["first", "pause"]
    # The purchase ended the run while it waited for the reminder: the reminder was never taken.
    assert [(s.step_id, s.kind) for s in run.steps][2:] == [("reminder", "exit_criterion")]

    # Exposures: everyone at the first step; the reminder's experiment only those who reached it.
    step_results = await experiments.GetExperimentResults(
        x.GetExperimentResultsRequest(experiment_id=on_step.id)
    )
    step_expected = Counter(_arm_of(on_step, p).name for p in [*persons, buyer])
    assert {a.arm: a.exposures for a in step_results.arms} == {
        name: step_expected[name] for name in ("subject_a", "subject_b", "holdout")
    }
    journey_results = await experiments.GetExperimentResults(
        x.GetExperimentResultsRequest(experiment_id=on_journey.id)
    )
    journey_expected = Counter(_arm_of(on_journey, p).name for p in persons)
    assert {a.arm: a.exposures for a in journey_results.arms} == {
        name: journey_expected[name] for name in ("reminded", "no_reminder")
    }
    exposures = await decisioning.rows(
        "SELECT person_id, request_id FROM experiment_exposures WHERE experiment_id = :e",
        e=uuid.UUID(on_step.id),
    )
    # A sent arm's exposure carries the send's request id (reports find the arm by it); a holdout's none.
    for row in exposures:
        held = _arm_of(on_step, row.person_id).holdout
        assert (row.request_id is None) == held
        if not held:
            assert row.request_id.startswith("journey-run:") and row.request_id.endswith(":first:1")
    for experiment in (on_step, on_journey):
        await experiments.StopExperiment(x.StopExperimentRequest(experiment_id=experiment.id))


async def test_a_send_time_arm_puts_the_message_off_by_its_delay(decisioning: Decisioning) -> None:
    experiments, reports = _stubs(decisioning)
    definition = await _definition(reports)
    email = await template(decisioning, c.CHANNEL_EMAIL)
    journey = await publish(
        decisioning, d.JourneySpec(entry=API, steps=[message("mail", email, c.CHANNEL_EMAIL)])
    )
    experiment = await _started(
        experiments,
        x.ExperimentAttachment(journey_step=x.ExperimentJourneyStep(journey_id=journey.id, step_id="mail")),
        [
            x.ExperimentArm(name="now", allocation_percent=50, control=True),
            x.ExperimentArm(name="later", allocation_percent=50, send_delay_s=1),
        ],
        definition,
    )
    persons: list[uuid.UUID] = []
    while len({_arm_of(experiment, p).name for p in persons}) < 2 or len(persons) < 4:
        persons.append(uuid.uuid4())
    for person in persons:
        await grant(decisioning, person, c.CHANNEL_EMAIL)
    await asyncio.sleep(0.3)
    for person in persons:
        await _trigger(decisioning, journey, person)
    for person in persons:
        [run] = await until_runs(decisioning, person, lambda found: found and found[0].state == COMPLETED)
        if _arm_of(experiment, person).name == "later":
            delayed, sent = run.steps
            assert (delayed.outcome, sent.outcome) == ("delayed", "sent")
            gap = sent.time.ToDatetime() - delayed.time.ToDatetime()
            assert gap.total_seconds() >= 1.0
        else:
            assert [s.outcome for s in run.steps] == ["sent"]
        assert await _sent_templates(decisioning, person, 1) == [email]
        [sent_request] = sends(decisioning, person)
        [exposure] = await decisioning.rows(
            "SELECT arm, request_id FROM experiment_exposures WHERE experiment_id = :e AND person_id = :p",
            e=uuid.UUID(experiment.id),
            p=person,
        )
        # Exposed once, when the step was reached, under the request id of the send that went.
        assert exposure.arm == _arm_of(experiment, person).name
        assert exposure.request_id == sent_request.request_id
    await experiments.StopExperiment(x.StopExperimentRequest(experiment_id=experiment.id))


@pytest.fixture(scope="module")
async def with_global_control(
    postgres: EmbeddedPostgres, nats_server: EmbeddedNats
) -> AsyncIterator[Decisioning]:
    """Decisioning keeping half of all persons from marketing."""
    async for running in decisioning_with_neighbours(
        postgres,
        nats_server,
        global_control_basis_points=5000,
        global_control_salt=GLOBAL_CONTROL_SALT,
    ):
        yield running


async def test_the_global_control_group_gets_no_step_of_a_journey_and_is_counted(
    with_global_control: Decisioning,
) -> None:
    decisioning = with_global_control
    experiments, reports = _stubs(decisioning)
    definition = await _definition(reports)
    email = await template(decisioning, c.CHANNEL_EMAIL)
    spec = d.JourneySpec(
        entry=API,
        steps=[
            message("welcome", email, c.CHANNEL_EMAIL, next_step="tip"),
            message("tip", email, c.CHANNEL_EMAIL),
        ],
    )
    journey = await publish(decisioning, spec)
    persons: list[uuid.UUID] = []
    while len({in_global_control(GLOBAL_CONTROL_SALT, p, 5000) for p in persons}) < 2 or len(persons) < 6:
        persons.append(uuid.uuid4())
    for person in persons:
        await grant(decisioning, person, c.CHANNEL_EMAIL)
    await asyncio.sleep(0.3)
    for person in persons:
        await _trigger(decisioning, journey, person)
    for person in persons:
        [run] = await until_runs(decisioning, person, lambda found: found and found[0].state == COMPLETED)
        held = in_global_control(GLOBAL_CONTROL_SALT, person, 5000)
        outcomes = [(s.step_id, s.outcome) for s in run.steps]
        if held:
            assert outcomes == [("welcome", "global_control"), ("tip", "global_control")]
            assert "global control group" in run.steps[0].detail
        else:
            assert outcomes == [("welcome", "sent"), ("tip", "sent")]
    for person in persons:
        held = in_global_control(GLOBAL_CONTROL_SALT, person, 5000)
        expected = 0 if held else 2
        assert await _sent_templates(decisioning, person, expected) == [email] * expected
    results = await experiments.GetExperimentResults(
        x.GetExperimentResultsRequest(
            experiment_id="00000000-0000-0000-0000-000000000000", conversion_definition_id=definition
        )
    )
    counted = {a.arm: a.exposures for a in results.arms}
    held_count = sum(in_global_control(GLOBAL_CONTROL_SALT, p, 5000) for p in persons)
    # Each person once, however many steps they reached.
    assert counted == {"global_control": held_count, "marketed": len(persons) - held_count}
