"""The gRPC servicers of omni.decisioning.v1.ExperimentService and ReportService: protobuf in and out, one
transaction per call."""

from __future__ import annotations

import csv
import io
import math
import uuid
from datetime import UTC, datetime

import grpc
from google.protobuf.json_format import ParseDict
from google.protobuf.struct_pb2 import Value
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.ext.asyncio import AsyncSession

from omni.common.v1 import common_pb2
from omni.decisioning.v1 import experiments_pb2, experiments_pb2_grpc, reports_pb2, reports_pb2_grpc
from omni_decisioning.experiments import stats, validation
from omni_decisioning.experiments.entities import (
    Anchor,
    AttachmentKind,
    ConversionDefinition,
    Experiment,
    ExperimentState,
    NewConversionDefinition,
)
from omni_decisioning.experiments.experiments import Experiments, Results
from omni_decisioning.experiments.outcomes import Outcomes, ReportLine
from omni_decisioning.experiments.repository import ExperimentRepository
from omni_decisioning.references import References
from omni_kit import validation as omni_validation
from omni_kit.errors import AlreadyExists, NotFound
from omni_kit.idempotency import idempotent
from omni_kit.ids import new_id
from omni_kit.paging import encode_after
from omni_kit.runtime import Runtime

_STATES = {
    ExperimentState.DRAFT: experiments_pb2.EXPERIMENT_STATE_DRAFT,
    ExperimentState.RUNNING: experiments_pb2.EXPERIMENT_STATE_RUNNING,
    ExperimentState.STOPPED: experiments_pb2.EXPERIMENT_STATE_STOPPED,
    ExperimentState.ARCHIVED: experiments_pb2.EXPERIMENT_STATE_ARCHIVED,
}


def _timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    timestamp = Timestamp()
    timestamp.FromDatetime(value)
    return timestamp


def experiment_to_proto(experiment: Experiment) -> experiments_pb2.Experiment:
    """The wire form of an experiment."""
    attachment = experiments_pb2.ExperimentAttachment()
    if experiment.attachment.kind == AttachmentKind.JOURNEY_STEP:
        journey_id, step_id = experiment.attachment.journey_and_step()
        attachment.journey_step.journey_id = str(journey_id)
        attachment.journey_step.step_id = step_id
    else:
        field = {
            AttachmentKind.JOURNEY: "journey_id",
            AttachmentKind.TEMPLATE: "template_id",
            AttachmentKind.OFFER_GROUP: "offer_group",
        }[experiment.attachment.kind]
        setattr(attachment, field, experiment.attachment.value)
    return experiments_pb2.Experiment(
        id=str(experiment.id),
        name=experiment.name,
        description=experiment.description,
        attachment=attachment,
        arms=[
            experiments_pb2.ExperimentArm(
                name=arm.name,
                allocation_percent=arm.allocation_percent,
                holdout=arm.holdout,
                template_id=arm.template_id,
                channel=common_pb2.Channel.ValueType(arm.channel),
                send_delay_s=arm.send_delay_s,
                offer_id=arm.offer_id,
                control=arm.control,
            )
            for arm in experiment.arms
        ],
        conversion_definition_id=str(experiment.conversion_definition_id),
        state=_STATES[experiment.state],
        create_time=_timestamp(experiment.create_time),
        start_time=_timestamp(experiment.start_time),
        stop_time=_timestamp(experiment.stop_time),
        archive_time=_timestamp(experiment.archive_time),
    )


def estimate(interval: stats.Interval) -> experiments_pb2.Estimate:
    """The wire form of an estimate with its interval."""
    return experiments_pb2.Estimate(value=interval.estimate, low=interval.low, high=interval.high)


def results_to_proto(results: Results) -> experiments_pb2.GetExperimentResultsResponse:
    """The wire form of an experiment's results."""
    response = experiments_pb2.GetExperimentResultsResponse(
        sample_ratio_chi_square=results.sample_ratio.chi_square,
        sample_ratio_p_value=results.sample_ratio.p_value,
        sample_ratio_mismatch=results.sample_ratio.mismatch,
    )
    if results.experiment is not None:
        response.experiment.CopyFrom(experiment_to_proto(results.experiment))
    for arm in results.arms:
        message = response.arms.add(
            arm=arm.arm.name,
            control=arm.arm.control,
            holdout=arm.arm.holdout,
            exposures=arm.exposures,
            conversions=arm.conversions,
            conversion_rate=estimate(arm.conversion_rate),
            revenue_minor=arm.revenue_minor,
            revenue_per_exposure=estimate(arm.revenue_per_exposure),
            significant=arm.significant,
            verdict=arm.verdict,
        )
        if arm.conversion_lift is not None:
            message.conversion_lift.CopyFrom(estimate(arm.conversion_lift))
        if arm.revenue_lift is not None:
            message.revenue_lift.CopyFrom(estimate(arm.revenue_lift))
        if arm.incremental_lift is not None:
            message.incremental_lift.CopyFrom(estimate(arm.incremental_lift))
    return response


def definition_to_proto(definition: ConversionDefinition) -> reports_pb2.ConversionDefinition:
    """The wire form of a conversion definition."""
    filters = []
    for item in definition.filters:
        value = Value()
        if item.value is not None:
            ParseDict(item.value, value)
        filters.append(
            reports_pb2.ConversionFilter(
                path=item.path, operator=reports_pb2.FilterOperator.ValueType(int(item.operator)), value=value
            )
        )
    return reports_pb2.ConversionDefinition(
        id=str(definition.id),
        name=definition.name,
        event_type=definition.event_type,
        filters=filters,
        window_s=definition.window_s,
        anchor=reports_pb2.CONVERSION_ANCHOR_IMPRESSION
        if definition.anchor == Anchor.IMPRESSION
        else reports_pb2.CONVERSION_ANCHOR_DELIVERY,
        revenue_property=definition.revenue_property,
        currency=definition.currency,
        create_time=_timestamp(definition.create_time),
    )


def line_to_proto(line: ReportLine) -> reports_pb2.ReportRow:
    """The wire form of a report line."""
    return reports_pb2.ReportRow(
        value=line.value,
        sent=line.sent,
        delivered=line.delivered,
        opened=line.opened,
        clicked=line.clicked,
        converted=line.converted,
        delivery_rate=estimate(line.delivery_rate),
        open_rate=estimate(line.open_rate),
        click_rate=estimate(line.click_rate),
        conversion_rate=estimate(line.conversion_rate),
        revenue_minor=line.revenue_minor,
        revenue_per_recipient=estimate(line.revenue_per_recipient),
    )


CSV_COLUMNS = [
    "value",
    "sent",
    "delivered",
    "opened",
    "clicked",
    "converted",
    "conversion_rate",
    "conversion_rate_low",
    "conversion_rate_high",
    "delivery_rate",
    "delivery_rate_low",
    "delivery_rate_high",
    "open_rate",
    "open_rate_low",
    "open_rate_high",
    "click_rate",
    "click_rate_low",
    "click_rate_high",
    "revenue_minor",
    "revenue_per_recipient",
    "revenue_per_recipient_low",
    "revenue_per_recipient_high",
]


def lines_to_csv(lines: list[ReportLine]) -> str:
    """A report as RFC 4180 CSV with a header row (an interval's open end is written empty)."""

    def number(value: float) -> str:
        return "" if math.isinf(value) or math.isnan(value) else f"{value:.6g}"

    def interval(value: stats.Interval) -> list[str]:
        return [number(value.estimate), number(value.low), number(value.high)]

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for line in lines:
        writer.writerow(
            [
                line.value,
                line.sent,
                line.delivered,
                line.opened,
                line.clicked,
                line.converted,
                *interval(line.conversion_rate),
                *interval(line.delivery_rate),
                *interval(line.open_rate),
                *interval(line.click_rate),
                line.revenue_minor,
                *interval(line.revenue_per_recipient),
            ]
        )
    return out.getvalue()


class ExperimentServicer(experiments_pb2_grpc.ExperimentServiceServicer):
    """Validates requests, runs the experiments domain in a transaction and translates the result."""

    def __init__(self, runtime: Runtime, experiments: Experiments, references: References) -> None:
        self._runtime = runtime
        self._experiments = experiments
        self._references = references

    async def CreateExperiment(
        self, request: experiments_pb2.CreateExperimentRequest, context: grpc.aio.ServicerContext
    ) -> experiments_pb2.CreateExperimentResponse:
        """Define a draft experiment, once per request id."""
        new = validation.create_experiment(request)
        # The gateway is asked about the templates named before anything is written (as CreateJourney does).
        if new.attachment.kind == AttachmentKind.TEMPLATE:
            await self._references.check_template(new.attachment.value, "experiment.attachment.template_id")
        for index, arm in enumerate(new.arms):
            if arm.template_id:
                await self._references.check_template(
                    arm.template_id, f"experiment.arms[{index}].template_id"
                )
        async with self._runtime.transaction() as session:

            async def create() -> experiments_pb2.CreateExperimentResponse:
                experiment = await self._experiments.create(session, new)
                return experiments_pb2.CreateExperimentResponse(experiment=experiment_to_proto(experiment))

            return await idempotent(
                session,
                "CreateExperiment",
                request.request_id,
                request,
                experiments_pb2.CreateExperimentResponse,
                create,
            )

    async def GetExperiment(
        self, request: experiments_pb2.GetExperimentRequest, context: grpc.aio.ServicerContext
    ) -> experiments_pb2.GetExperimentResponse:
        """Return an experiment."""
        omni_validation.validate(request)
        async with self._runtime.transaction() as session:
            experiment = await self._experiments.get(session, uuid.UUID(request.experiment_id))
        return experiments_pb2.GetExperimentResponse(experiment=experiment_to_proto(experiment))

    async def ListExperiments(
        self, request: experiments_pb2.ListExperimentsRequest, context: grpc.aio.ServicerContext
    ) -> experiments_pb2.ListExperimentsResponse:
        """Page through the experiments in creation order."""
        size, after = validation.page(request, validation.EXPERIMENTS)
        async with self._runtime.transaction() as session:
            experiments, more = await self._experiments.page(
                session, after=after, size=size, show_archived=request.show_archived
            )
        return experiments_pb2.ListExperimentsResponse(
            experiments=[experiment_to_proto(e) for e in experiments],
            next_page_token=encode_after(validation.EXPERIMENTS, experiments[-1].id)
            if more and experiments
            else "",
        )

    async def _move(self, experiment_id: str, state: ExperimentState) -> experiments_pb2.Experiment:
        async with self._runtime.transaction() as session:
            experiment = await self._experiments.move(session, uuid.UUID(experiment_id), state)
        return experiment_to_proto(experiment)

    async def StartExperiment(
        self, request: experiments_pb2.StartExperimentRequest, context: grpc.aio.ServicerContext
    ) -> experiments_pb2.StartExperimentResponse:
        """Start assigning."""
        omni_validation.validate(request)
        return experiments_pb2.StartExperimentResponse(
            experiment=await self._move(request.experiment_id, ExperimentState.RUNNING)
        )

    async def StopExperiment(
        self, request: experiments_pb2.StopExperimentRequest, context: grpc.aio.ServicerContext
    ) -> experiments_pb2.StopExperimentResponse:
        """Stop assigning."""
        omni_validation.validate(request)
        return experiments_pb2.StopExperimentResponse(
            experiment=await self._move(request.experiment_id, ExperimentState.STOPPED)
        )

    async def ArchiveExperiment(
        self, request: experiments_pb2.ArchiveExperimentRequest, context: grpc.aio.ServicerContext
    ) -> experiments_pb2.ArchiveExperimentResponse:
        """Hide from lists."""
        omni_validation.validate(request)
        return experiments_pb2.ArchiveExperimentResponse(
            experiment=await self._move(request.experiment_id, ExperimentState.ARCHIVED)
        )

    async def GetExperimentResults(
        self, request: experiments_pb2.GetExperimentResultsRequest, context: grpc.aio.ServicerContext
    ) -> experiments_pb2.GetExperimentResultsResponse:
        """Per-arm results with intervals and the sample-ratio check."""
        omni_validation.validate(request)
        definition = uuid.UUID(request.conversion_definition_id) if request.conversion_definition_id else None
        async with self._runtime.transaction() as session:
            results = await self._experiments.results(session, uuid.UUID(request.experiment_id), definition)
        return results_to_proto(results)


class ReportServicer(reports_pb2_grpc.ReportServiceServicer):
    """Conversion definitions and outcome reports."""

    def __init__(self, runtime: Runtime, repository: ExperimentRepository, outcomes: Outcomes) -> None:
        self._runtime = runtime
        self._repository = repository
        self._outcomes = outcomes

    async def CreateConversionDefinition(
        self, request: reports_pb2.CreateConversionDefinitionRequest, context: grpc.aio.ServicerContext
    ) -> reports_pb2.CreateConversionDefinitionResponse:
        """Define a conversion."""
        new: NewConversionDefinition = validation.create_definition(request)
        definition = ConversionDefinition(
            **{name: getattr(new, name) for name in NewConversionDefinition.__dataclass_fields__},
            id=new_id(),
            create_time=datetime.now(UTC),
        )
        async with self._runtime.transaction() as session:
            if not await self._repository.insert_definition(session, definition):
                raise AlreadyExists(
                    message=f"a conversion definition named {new.name!r} exists already",
                    reason="CONVERSION_DEFINITION_EXISTS",
                    metadata={"name": new.name},
                )
        return reports_pb2.CreateConversionDefinitionResponse(definition=definition_to_proto(definition))

    async def ListConversionDefinitions(
        self, request: reports_pb2.ListConversionDefinitionsRequest, context: grpc.aio.ServicerContext
    ) -> reports_pb2.ListConversionDefinitionsResponse:
        """Page through the definitions."""
        size, after = validation.page(request, validation.DEFINITIONS)
        async with self._runtime.transaction() as session:
            rows = await self._repository.list_definitions(session, after=after, limit=size + 1)
        page = rows[:size]
        return reports_pb2.ListConversionDefinitionsResponse(
            definitions=[definition_to_proto(d) for d in page],
            next_page_token=encode_after(validation.DEFINITIONS, page[-1].id) if len(rows) > size else "",
        )

    async def _lines(
        self, request: reports_pb2.GetOutcomeReportRequest, prefix: str = ""
    ) -> tuple[list[ReportLine], bool, str]:
        dimension, definition_id, model, start, end = validation.report(request, prefix)
        async with self._runtime.transaction() as session:
            await _definition_exists(self._repository, session, definition_id)
            return await self._outcomes.report(
                session, dimension=dimension, definition_id=definition_id, model=model, start=start, end=end
            )

    async def GetOutcomeReport(
        self, request: reports_pb2.GetOutcomeReportRequest, context: grpc.aio.ServicerContext
    ) -> reports_pb2.GetOutcomeReportResponse:
        """One row per value of the dimension."""
        lines, truncated, note = await self._lines(request)
        return reports_pb2.GetOutcomeReportResponse(
            rows=[line_to_proto(line) for line in lines], truncated=truncated, note=note
        )

    async def ExportOutcomeReport(
        self, request: reports_pb2.ExportOutcomeReportRequest, context: grpc.aio.ServicerContext
    ) -> reports_pb2.ExportOutcomeReportResponse:
        """The report as CSV."""
        omni_validation.check(request).raise_if_any()
        lines, _, _ = await self._lines(request.report, "report")
        return reports_pb2.ExportOutcomeReportResponse(csv=lines_to_csv(lines))


async def _definition_exists(
    repository: ExperimentRepository, session: AsyncSession, definition_id: uuid.UUID
) -> None:
    if await repository.get_definition(session, definition_id) is None:
        raise NotFound(
            message=f"no conversion definition {definition_id}",
            reason="CONVERSION_DEFINITION_NOT_FOUND",
            metadata={"field": "conversion_definition_id"},
        )
