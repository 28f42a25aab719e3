"""Checks of experiment and report requests beyond what experiments.proto and reports.proto declare: arms
(names unique, shares adding up to 100, one control, a holdout sends no template), filter values, and page
tokens. Every problem is a field violation, all raised together; nothing is written before a request passes.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime

from google.protobuf.json_format import MessageToDict

from omni.decisioning.v1 import experiments_pb2, reports_pb2
from omni_decisioning.experiments.entities import (
    Anchor,
    Arm,
    Attachment,
    AttachmentKind,
    Dimension,
    Model,
    NewConversionDefinition,
    NewExperiment,
    Operator,
    PropertyFilter,
)
from omni_kit import validation
from omni_kit.errors import Violations
from omni_kit.paging import PageTokenError, decode_after

EXPERIMENTS = "decisioning.experiments"
DEFINITIONS = "decisioning.conversion_definitions"
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500

_DIMENSIONS = {
    reports_pb2.REPORT_DIMENSION_CHANNEL: Dimension.CHANNEL,
    reports_pb2.REPORT_DIMENSION_JOURNEY: Dimension.JOURNEY,
    reports_pb2.REPORT_DIMENSION_TEMPLATE: Dimension.TEMPLATE,
    reports_pb2.REPORT_DIMENSION_EXPERIMENT_ARM: Dimension.EXPERIMENT_ARM,
    reports_pb2.REPORT_DIMENSION_ACQUISITION_SOURCE: Dimension.ACQUISITION_SOURCE,
    reports_pb2.REPORT_DIMENSION_CHANNEL_COUNT: Dimension.CHANNEL_COUNT,
    reports_pb2.REPORT_DIMENSION_OFFER: Dimension.OFFER,
}
_MODELS = {
    reports_pb2.ATTRIBUTION_MODEL_UNSPECIFIED: Model.LAST_TOUCH,
    reports_pb2.ATTRIBUTION_MODEL_LAST_TOUCH: Model.LAST_TOUCH,
    reports_pb2.ATTRIBUTION_MODEL_FIRST_TOUCH: Model.FIRST_TOUCH,
    reports_pb2.ATTRIBUTION_MODEL_LINEAR: Model.LINEAR,
}


def create_experiment(request: experiments_pb2.CreateExperimentRequest) -> NewExperiment:
    """The experiment asked for; InvalidArgument listing every bad field otherwise."""
    violations = validation.check_counts(request.experiment, prefix="experiment")
    violations.raise_if_any()
    violations = validation.check(request)
    experiment = request.experiment
    arms = experiment.arms
    names = [arm.name for arm in arms]
    for index, name in enumerate(names):
        if name in names[:index]:
            violations.add(f"experiment.arms[{index}].name", f"listed twice: {name!r}")
    if arms and sum(arm.allocation_percent for arm in arms) != 100:
        violations.add("experiment.arms", "the allocation_percent of the arms must add up to 100")
    if arms and sum(1 for arm in arms if arm.control) != 1:
        violations.add("experiment.arms", "exactly one arm must be the control")
    for index, arm in enumerate(arms):
        if arm.holdout and (arm.template_id or arm.channel or arm.offer_id or arm.send_delay_s):
            violations.add(
                f"experiment.arms[{index}]",
                "a holdout arm sends nothing: no template, channel, offer or delay",
            )
    violations.raise_if_any()
    target = experiment.attachment.WhichOneof("target")
    if target == "journey_step":
        step = experiment.attachment.journey_step
        attachment = Attachment.journey_step(step.journey_id, step.step_id)
    else:
        kind = {
            "journey_id": AttachmentKind.JOURNEY,
            "template_id": AttachmentKind.TEMPLATE,
            "offer_group": AttachmentKind.OFFER_GROUP,
        }[str(target)]
        value = getattr(experiment.attachment, str(target))
        if kind == AttachmentKind.JOURNEY:
            value = str(uuid.UUID(value))
        attachment = Attachment(kind, value)
    return NewExperiment(
        name=experiment.name,
        description=experiment.description,
        attachment=attachment,
        arms=tuple(
            Arm(
                name=arm.name,
                allocation_percent=arm.allocation_percent,
                holdout=arm.holdout,
                template_id=arm.template_id,
                channel=int(arm.channel),
                send_delay_s=arm.send_delay_s,
                offer_id=arm.offer_id,
                control=arm.control,
            )
            for arm in arms
        ),
        conversion_definition_id=uuid.UUID(experiment.conversion_definition_id),
    )


def page(
    request: experiments_pb2.ListExperimentsRequest | reports_pb2.ListConversionDefinitionsRequest, kind: str
) -> tuple[int, uuid.UUID | None]:
    """The page size (0 → 50, above 500 → 500) and the id the page starts after."""
    violations = validation.check(request)
    after = None
    if request.page_token:
        try:
            after = decode_after(kind, request.page_token)
        except PageTokenError:
            violations.add("page_token", "not a token this service issued")
    violations.raise_if_any()
    return min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE), after


def create_definition(request: reports_pb2.CreateConversionDefinitionRequest) -> NewConversionDefinition:
    """The definition asked for; InvalidArgument listing every bad field otherwise."""
    violations = validation.check_counts(request.definition, prefix="definition")
    violations.raise_if_any()
    violations = validation.check(request)
    definition = request.definition
    filters = []
    for index, item in enumerate(definition.filters):
        path = f"definition.filters[{index}].value"
        kind = item.value.WhichOneof("kind")
        if item.operator != reports_pb2.FILTER_OPERATOR_EXISTS and kind not in (
            "string_value",
            "number_value",
            "bool_value",
        ):
            violations.add(path, "a string, number or bool is required")
            continue
        text = item.value.string_value
        if kind == "string_value" and (
            len(text) > 1_000 or any(ord(ch) < 32 or ord(ch) == 127 for ch in text)
        ):
            violations.add(path, "at most 1,000 characters, no control characters")
            continue
        if kind == "number_value" and not math.isfinite(item.value.number_value):
            violations.add(path, "must be a finite number")
            continue
        if item.operator not in set(Operator):
            continue  # refused by the proto's rules (defined values only)
        value = MessageToDict(item.value) if kind in ("string_value", "number_value", "bool_value") else None
        filters.append(PropertyFilter(item.path, Operator(item.operator or Operator.EXISTS), value))
    if definition.revenue_property and not definition.currency:
        violations.add("definition.currency", "required with a revenue_property")
    violations.raise_if_any()
    return NewConversionDefinition(
        name=definition.name,
        event_type=definition.event_type,
        filters=tuple(filters),
        window_s=definition.window_s,
        anchor=Anchor.IMPRESSION
        if definition.anchor == reports_pb2.CONVERSION_ANCHOR_IMPRESSION
        else Anchor.DELIVERY,
        revenue_property=definition.revenue_property,
        currency=definition.currency,
    )


def report(
    request: reports_pb2.GetOutcomeReportRequest, prefix: str = ""
) -> tuple[Dimension, uuid.UUID, Model, datetime | None, datetime | None]:
    """The report asked for; InvalidArgument listing every bad field otherwise."""
    violations = validation.check(request, Violations(), prefix=prefix)
    # Times outside what the proto allows cannot be turned into datetimes: refused before that.
    violations.raise_if_any()
    times: dict[str, datetime | None] = {}
    for name in ("start_time", "end_time"):
        times[name] = None
        if request.HasField(name):
            try:
                times[name] = getattr(request, name).ToDatetime(tzinfo=UTC)
            except ValueError as error:  # nanos out of range
                violations.add(f"{prefix}.{name}" if prefix else name, str(error))
    start, end = times["start_time"], times["end_time"]
    if start is not None and end is not None and end <= start:
        violations.add(f"{prefix}.end_time" if prefix else "end_time", "must be after start_time")
    violations.raise_if_any()
    return (
        _DIMENSIONS[request.dimension],
        uuid.UUID(request.conversion_definition_id),
        _MODELS[request.model],
        start,
        end,
    )
