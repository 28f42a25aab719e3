"""Experiments, conversion definitions and outcome reports over gRPC, JetStream and PostgreSQL: a journey's
sends split between arms and a holdout, the gateway's sends and receipts and profile's events in, results and
reports out."""

from __future__ import annotations

import csv
import io
import math
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct, Value

from omni.common.v1 import common_pb2 as c
from omni.decisioning.v1 import events_pb2, experiments_pb2_grpc, reports_pb2_grpc
from omni.decisioning.v1 import experiments_pb2 as x
from omni.decisioning.v1 import reports_pb2 as r
from omni.events.v1 import envelope_pb2
from omni.gateway.v1 import events_pb2 as gateway_events
from omni.gateway.v1 import gateway_pb2 as g
from omni.profile.v1 import events_pb2 as profile_events
from omni.profile.v1 import profile_pb2 as p
from omni.segmentation.v1 import events_pb2 as segmentation_events
from omni_decisioning.experiments.assignment import choose_arm
from omni_decisioning.experiments.entities import Arm
from omni_kit.bus import unpack
from omni_kit.errors import status_details

from .support import Decisioning
from .test_journeys import create_journey, grant


def _violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    return {v.field: v.description for v in status_details(error).field_violations}


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
                window_s=7 * 86_400,
                revenue_property="total",
                currency="EUR",
            )
        )
    )
    return response.definition.id


def _arms(template_a: str, template_b: str) -> list[x.ExperimentArm]:
    return [
        x.ExperimentArm(name="subject_a", allocation_percent=45, template_id=template_a, control=True),
        x.ExperimentArm(name="subject_b", allocation_percent=45, template_id=template_b),
        x.ExperimentArm(name="holdout", allocation_percent=10, holdout=True),
    ]


async def test_bad_experiments_are_refused_with_every_field_named(decisioning: Decisioning) -> None:
    experiments, reports = _stubs(decisioning)
    definition = await _definition(reports)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await experiments.CreateExperiment(
            x.CreateExperimentRequest(
                experiment=x.Experiment(
                    name="bad",
                    attachment=x.ExperimentAttachment(journey_id="not-a-uuid"),
                    arms=[
                        x.ExperimentArm(name="a", allocation_percent=50, control=True),
                        x.ExperimentArm(name="a", allocation_percent=30, control=True),
                        x.ExperimentArm(name="h", allocation_percent=10, holdout=True, template_id="t"),
                    ],
                    conversion_definition_id=definition,
                )
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = _violations(caught.value)
    assert "experiment.attachment.journey_id" in violations
    # The proto's rules come first; the arms' own checks are reported once those pass.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await experiments.CreateExperiment(
            x.CreateExperimentRequest(
                experiment=x.Experiment(
                    name="bad",
                    attachment=x.ExperimentAttachment(template_id="t"),
                    arms=[
                        x.ExperimentArm(name="a", allocation_percent=50, control=True),
                        x.ExperimentArm(name="a", allocation_percent=30, control=True),
                        x.ExperimentArm(name="h", allocation_percent=10, holdout=True, template_id="t"),
                    ],
                    conversion_definition_id=definition,
                )
            )
        )
    violations = _violations(caught.value)
    assert set(violations) == {"experiment.arms[1].name", "experiment.arms", "experiment.arms[2]"}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await reports.GetOutcomeReport(r.GetOutcomeReportRequest(conversion_definition_id="x"))
    assert set(_violations(caught.value)) == {"dimension", "conversion_definition_id"}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await reports.CreateConversionDefinition(
            r.CreateConversionDefinitionRequest(
                definition=r.ConversionDefinition(
                    name="x",
                    event_type="Order",
                    window_s=0,
                    revenue_property="total",
                    filters=[r.ConversionFilter(path="a", operator=r.FILTER_OPERATOR_EQUAL)],
                )
            )
        )
    assert set(_violations(caught.value)) == {
        "definition.event_type",
        "definition.window_s",
        "definition.filters[0].value",
        "definition.currency",
    }


async def test_values_postgresql_cannot_store_or_python_cannot_date_are_refused(
    decisioning: Decisioning,
) -> None:
    experiments, reports = _stubs(decisioning)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await reports.CreateConversionDefinition(
            r.CreateConversionDefinitionRequest(
                definition=r.ConversionDefinition(
                    name="nan",
                    event_type="order_completed",
                    window_s=60,
                    filters=[
                        r.ConversionFilter(
                            path="a", operator=r.FILTER_OPERATOR_LESS, value=Value(number_value=math.nan)
                        ),
                        r.ConversionFilter(
                            path="b", operator=r.FILTER_OPERATOR_EQUAL, value=Value(string_value="x\x00")
                        ),
                    ],
                )
            )
        )
    assert set(_violations(caught.value)) == {"definition.filters[0].value", "definition.filters[1].value"}
    far = r.GetOutcomeReportRequest(
        dimension=r.REPORT_DIMENSION_CHANNEL, conversion_definition_id=str(uuid.uuid4())
    )
    far.start_time.FromDatetime(datetime(9500, 1, 1, tzinfo=UTC))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await reports.ExportOutcomeReport(r.ExportOutcomeReportRequest(report=far))
    assert set(_violations(caught.value)) == {"report.start_time"}
    # Found by fuzzing: nanos a Timestamp cannot hold, and an operator no enum value names, were INTERNAL.
    bad_nanos = r.GetOutcomeReportRequest(
        dimension=r.REPORT_DIMENSION_CHANNEL, conversion_definition_id=str(uuid.uuid4())
    )
    bad_nanos.start_time.seconds, bad_nanos.start_time.nanos = 1_796_694_331, 1_000_000_000
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await reports.GetOutcomeReport(bad_nanos)
    assert set(_violations(caught.value)) == {"start_time"}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await reports.CreateConversionDefinition(
            r.CreateConversionDefinitionRequest(
                definition=r.ConversionDefinition(
                    name="bad-operator",
                    event_type="order_completed",
                    window_s=60,
                    filters=[r.ConversionFilter(path="a", operator=-1, value=Value(bool_value=False))],  # type: ignore[arg-type]
                )
            )
        )
    assert set(_violations(caught.value)) == {"definition.filters[0].operator"}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await experiments.CreateExperiment(
            x.CreateExperimentRequest(
                experiment=x.Experiment(
                    name="nul",
                    description="a\x00b",
                    attachment=x.ExperimentAttachment(offer_group="coffee"),
                    arms=[
                        x.ExperimentArm(name="a", allocation_percent=50, control=True),
                        x.ExperimentArm(name="b", allocation_percent=50),
                    ],
                    conversion_definition_id=str(uuid.uuid4()),
                )
            )
        )
    assert set(_violations(caught.value)) == {"experiment.description"}


async def test_an_experiment_lives_draft_running_stopped_archived(decisioning: Decisioning) -> None:
    experiments, reports = _stubs(decisioning)
    definition = await _definition(reports)
    template = await decisioning.template()
    created = (
        await experiments.CreateExperiment(
            x.CreateExperimentRequest(
                experiment=x.Experiment(
                    name=f"life-{uuid.uuid4().hex[:6]}",
                    attachment=x.ExperimentAttachment(template_id=template),
                    arms=_arms(template, template),
                    conversion_definition_id=definition,
                )
            )
        )
    ).experiment
    assert created.state == x.EXPERIMENT_STATE_DRAFT
    other = (
        await experiments.CreateExperiment(
            x.CreateExperimentRequest(
                experiment=x.Experiment(
                    name=f"other-{uuid.uuid4().hex[:6]}",
                    attachment=x.ExperimentAttachment(template_id=template),
                    arms=_arms(template, template),
                    conversion_definition_id=definition,
                )
            )
        )
    ).experiment
    started = await experiments.StartExperiment(x.StartExperimentRequest(experiment_id=created.id))
    assert started.experiment.state == x.EXPERIMENT_STATE_RUNNING
    assert started.experiment.HasField("start_time")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await experiments.StartExperiment(x.StartExperimentRequest(experiment_id=other.id))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await experiments.ArchiveExperiment(x.ArchiveExperimentRequest(experiment_id=created.id))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await experiments.StopExperiment(x.StopExperimentRequest(experiment_id=created.id))
    await experiments.StartExperiment(x.StartExperimentRequest(experiment_id=other.id))
    archived = await experiments.ArchiveExperiment(x.ArchiveExperimentRequest(experiment_id=created.id))
    assert archived.experiment.state == x.EXPERIMENT_STATE_ARCHIVED
    listed = await experiments.ListExperiments(x.ListExperimentsRequest(page_size=500))
    assert created.id not in {e.id for e in listed.experiments}
    listed = await experiments.ListExperiments(x.ListExperimentsRequest(page_size=500, show_archived=True))
    assert created.id in {e.id for e in listed.experiments}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await experiments.GetExperiment(x.GetExperimentRequest(experiment_id=str(uuid.uuid4())))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    # What an experiment names must exist: an arm's template (in the gateway), the journey, the definition.
    for attachment, arm_template, definition_id, missing in (
        (x.ExperimentAttachment(template_id=template), "no-such-template", definition, "TEMPLATE_NOT_FOUND"),
        (x.ExperimentAttachment(journey_id=str(uuid.uuid4())), template, definition, "JOURNEY_NOT_FOUND"),
        (
            x.ExperimentAttachment(template_id=template),
            template,
            str(uuid.uuid4()),
            "CONVERSION_DEFINITION_NOT_FOUND",
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await experiments.CreateExperiment(
                x.CreateExperimentRequest(
                    experiment=x.Experiment(
                        name=f"missing-{uuid.uuid4().hex[:6]}",
                        attachment=attachment,
                        arms=_arms(template, arm_template),
                        conversion_definition_id=definition_id,
                    )
                )
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        info = status_details(caught.value).error_info
        assert info is not None and info.reason == missing
    await experiments.StopExperiment(x.StopExperimentRequest(experiment_id=other.id))


async def test_journey_sends_follow_the_arms_and_outcomes_reach_results_and_reports(
    decisioning: Decisioning,
) -> None:
    experiments, reports = _stubs(decisioning)
    definition = await _definition(reports)
    segment = await decisioning.segment()
    journey = await create_journey(decisioning, segment, [c.CHANNEL_EMAIL])
    template_b = await decisioning.template()
    experiment = (
        await experiments.CreateExperiment(
            x.CreateExperimentRequest(
                experiment=x.Experiment(
                    name=f"subjects-{uuid.uuid4().hex[:6]}",
                    attachment=x.ExperimentAttachment(journey_id=journey.id),
                    arms=_arms(journey.template_id, template_b),
                    conversion_definition_id=definition,
                )
            )
        )
    ).experiment
    await experiments.StartExperiment(x.StartExperimentRequest(experiment_id=experiment.id))
    persons = [uuid.uuid4() for _ in range(60)]
    for person in persons:
        await grant(decisioning, person, c.CHANNEL_EMAIL)
        await decisioning.feed(
            segmentation_events.PersonEnteredSegmentEvent(person_id=str(person), segment_id=str(segment)),
            event_type="segmentation.person_entered_segment",
            person_id=str(person),
        )
    await decisioning.eventually(
        "SELECT count(*) = 60 FROM journey_runs WHERE journey_id = :j", j=uuid.UUID(journey.id)
    )
    arms = [Arm(a.name, a.allocation_percent, a.holdout, a.template_id) for a in experiment.arms]
    expected = {person: choose_arm(uuid.UUID(experiment.id), arms, person) for person in persons}
    runs = {
        row.person_id: row
        for row in await decisioning.rows(
            "SELECT person_id, outcome, request_id FROM journey_runs WHERE journey_id = :j",
            j=uuid.UUID(journey.id),
        )
    }
    for person, arm in expected.items():
        assert runs[person].outcome == ("holdout" if arm.holdout else "send_requested")
    exposures = dict(
        (row.person_id, row.arm)
        for row in await decisioning.rows(
            "SELECT person_id, arm FROM experiment_exposures WHERE experiment_id = :e",
            e=uuid.UUID(experiment.id),
        )
    )
    assert exposures == {person: arm.name for person, arm in expected.items()}
    sends = {}
    for person, arm in expected.items():
        if arm.holdout:
            continue

        def sent_to(e: envelope_pb2.Envelope, person: uuid.UUID = person) -> bool:
            return e.type == "decisioning.send_requested" and e.person_id == str(person)

        envelope = await decisioning.published.wait_for(sent_to)
        request = unpack(envelope, events_pb2.SendRequestedEvent)
        assert request.template_id == arm.template_id
        sends[person] = request
    assert not decisioning.published.matching(
        lambda e: (
            e.type == "decisioning.send_requested"
            and e.person_id in {str(p_) for p_, a in expected.items() if a.holdout}
        )
    )

    # The gateway sends and reports a delivery; some persons buy (holdout persons too).
    now = datetime.now(UTC)
    for person, request in sends.items():
        message = g.Message(
            request_id=request.request_id,
            person_id=str(person),
            channel=c.CHANNEL_EMAIL,
            template_id=request.template_id,
            journey_id=journey.id,
        )
        message.update_time.FromDatetime(now)
        await decisioning.feed(
            gateway_events.MessageSentEvent(message=message),
            event_type="gateway.message_sent",
            person_id=str(person),
        )
        await decisioning.feed(
            gateway_events.MessageReceiptEvent(message=message, kind=gateway_events.RECEIPT_KIND_DELIVERED),
            event_type="gateway.message_receipt",
            person_id=str(person),
        )
    buyers = persons[::3]
    for index, person in enumerate(buyers):
        properties = Struct()
        properties.update({"total": 20.5})
        event = p.Event(
            id=f"order-{index}-{person}", type="order_completed", person_id=str(person), properties=properties
        )
        event.occurred_at.FromDatetime(now + timedelta(minutes=5))
        await decisioning.feed(
            profile_events.EventTrackedEvent(event=event),
            event_type="profile.event_tracked",
            person_id=str(person),
        )
    await decisioning.eventually(
        "SELECT count(*) = :n FROM outcome_conversions WHERE definition_id = :d",
        n=len(buyers),
        d=uuid.UUID(definition),
    )
    await decisioning.eventually(
        "SELECT sum(delivered) = :n FROM outcome_rollups WHERE dimension = 'channel' AND grain = 'hour'",
        n=len(sends),
    )

    results = await experiments.GetExperimentResults(
        x.GetExperimentResultsRequest(experiment_id=experiment.id)
    )
    by_arm = {arm.arm: arm for arm in results.arms}
    counts = Counter(arm.name for arm in expected.values())
    bought = Counter(expected[person].name for person in buyers)
    for name in ("subject_a", "subject_b", "holdout"):
        assert by_arm[name].exposures == counts[name]
        assert by_arm[name].conversions == bought[name]
        assert by_arm[name].revenue_minor == 2050 * bought[name]
        assert (
            by_arm[name].conversion_rate.low
            <= by_arm[name].conversion_rate.value
            <= by_arm[name].conversion_rate.high
        )
    assert by_arm["subject_a"].verdict == "control"
    assert by_arm["subject_b"].verdict == "not yet significant"
    assert not results.sample_ratio_mismatch

    report = await reports.GetOutcomeReport(
        r.GetOutcomeReportRequest(
            dimension=r.REPORT_DIMENSION_EXPERIMENT_ARM, conversion_definition_id=definition
        )
    )
    rows = {row.value: row for row in report.rows}
    sent_buyers = Counter(expected[person].name for person in buyers if person in sends)
    for name in ("subject_a", "subject_b"):
        row = rows[f"{experiment.id}/{name}"]
        assert row.sent == row.delivered == counts[name]
        assert row.converted == sent_buyers[name]
        assert row.revenue_minor == 2050 * sent_buyers[name]
    assert f"{experiment.id}/holdout" not in rows
    exported = await reports.ExportOutcomeReport(
        r.ExportOutcomeReportRequest(
            report=r.GetOutcomeReportRequest(
                dimension=r.REPORT_DIMENSION_TEMPLATE,
                conversion_definition_id=definition,
                model=r.ATTRIBUTION_MODEL_LINEAR,
            )
        )
    )
    table = list(csv.DictReader(io.StringIO(exported.csv)))
    by_template = {row["value"]: row for row in table}
    assert int(by_template[template_b]["sent"]) == counts["subject_b"]
    channel_count = await reports.GetOutcomeReport(
        r.GetOutcomeReportRequest(
            dimension=r.REPORT_DIMENSION_CHANNEL_COUNT, conversion_definition_id=definition
        )
    )
    assert "Observational" in channel_count.note
    assert [(row.value, row.sent) for row in channel_count.rows] == [("1", len(sends))]
