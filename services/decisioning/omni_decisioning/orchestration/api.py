"""The RPCs of multi-step journeys, as a mixin of DecisioningServicer: protobuf in and out, one transaction per
call (the domain is in lifecycle.py and engine.py)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.timestamp_pb2 import Timestamp

from omni.decisioning.v1 import decisioning_pb2 as d
from omni_decisioning.models import FlowRunStepRow, JourneyRow
from omni_decisioning.orchestration import spec as specs
from omni_decisioning.orchestration.engine import Engine
from omni_decisioning.orchestration.lifecycle import Lifecycle, not_found
from omni_decisioning.orchestration.store import Run, Store
from omni_decisioning.read_models import ReadModels
from omni_decisioning.references import References
from omni_kit import validation
from omni_kit.errors import FailedPrecondition, NotFound, Violations, check_json_text
from omni_kit.idempotency import idempotent
from omni_kit.paging import PageTokenError, decode_after, encode_after

if TYPE_CHECKING:
    from omni_kit.runtime import Runtime

RUNS = "decisioning.journey_runs"
MAX_PROPERTIES_BYTES = 8 * 1024

JOURNEY_STATES = {
    "draft": d.JOURNEY_STATE_DRAFT,
    "published": d.JOURNEY_STATE_PUBLISHED,
    "paused": d.JOURNEY_STATE_PAUSED,
    "archived": d.JOURNEY_STATE_ARCHIVED,
}
RUN_STATES = {
    "active": d.JourneyRun.RUN_STATE_ACTIVE,
    "completed": d.JourneyRun.RUN_STATE_COMPLETED,
    "exited": d.JourneyRun.RUN_STATE_EXITED,
}


@dataclass(frozen=True)
class JourneyFlows:
    """What the multi-step journey RPCs work with."""

    lifecycle: Lifecycle
    engine: Engine
    store: Store
    references: References
    read_models: ReadModels


def _timestamp(value: datetime) -> Timestamp:
    timestamp = Timestamp()
    timestamp.FromDatetime(value)
    return timestamp


def journey_view(row: JourneyRow, spec: dict[str, Any] | None, version: int) -> d.Journey:
    """The wire form of a multi-step journey showing one spec (a version's, or the draft with version 0)."""
    message = d.Journey(
        id=str(row.id),
        name=row.name,
        create_time=_timestamp(row.create_time),
        version=version,
        state=JOURNEY_STATES[row.state],
        update_time=_timestamp(row.update_time or row.create_time),
        has_draft=row.draft is not None,
    )
    if spec is not None:
        message.spec.CopyFrom(specs.from_json(spec))
    return message


def run_view(run: Run, steps: list[FlowRunStepRow]) -> d.JourneyRun:
    """The wire form of a run with the steps it took."""
    message = d.JourneyRun(
        id=str(run.id),
        journey_id=str(run.journey_id),
        version=run.version,
        person_id=str(run.person_id),
        key=run.key,
        state=RUN_STATES.get(run.state, d.JourneyRun.RUN_STATE_UNSPECIFIED),
        current_step=run.current_step or "",
        start_time=_timestamp(run.start_time),
        end_reason=run.end_reason or "",
        steps=[
            d.RunStep(
                step_id=step.step_id,
                kind=step.kind,
                time=_timestamp(step.at),
                outcome=step.outcome,
                detail=step.detail,
                next_step=step.next_step or "",
            )
            for step in steps
        ],
    )
    if run.due_at is not None and run.state == "active":
        message.due_time.CopyFrom(_timestamp(run.due_at))
    if run.end_time is not None:
        message.end_time.CopyFrom(_timestamp(run.end_time))
    return message


def _journey_id(request: Any, violations: Violations) -> uuid.UUID:
    violations.raise_if_any()
    return uuid.UUID(request.journey_id)


class JourneyFlowsApi:
    """The multi-step journey RPCs of DecisioningServicer."""

    _runtime: Runtime
    _flows: JourneyFlows

    async def create_multi_step_journey(self, request: d.CreateJourneyRequest) -> d.CreateJourneyResponse:
        """CreateJourney with a spec: the journey as a draft, once per request id."""
        violations = validation.check(request)
        journey = request.journey
        specs.check(journey.spec, violations, "journey.spec")
        for name in ("trigger_segment_id", "template_id"):
            violations.check(
                not getattr(journey, name),
                f"journey.{name}",
                "must be empty with a spec (name the entry in it)",
            )
        violations.check(
            not journey.channels, "journey.channels", "must be empty with a spec (message steps name theirs)"
        )
        violations.raise_if_any()
        async with self._runtime.transaction() as session:

            async def create() -> d.CreateJourneyResponse:
                row = await self._flows.lifecycle.create(session, journey.name, journey.spec)
                return d.CreateJourneyResponse(journey=journey_view(row, row.draft, 0))

            return await idempotent(
                session, "CreateJourney", request.request_id, request, d.CreateJourneyResponse, create
            )

    async def GetJourney(
        self, request: d.GetJourneyRequest, context: grpc.aio.ServicerContext
    ) -> d.GetJourneyResponse:
        """A journey at a published version, or its draft."""
        journey_id = _journey_id(request, validation.check(request))
        async with self._runtime.transaction() as session:
            row = await self._flows.store.journey(session, journey_id)
            if row is None:
                raise not_found(journey_id)
            if not row.multi_step:
                return d.GetJourneyResponse(
                    journey=d.Journey(
                        id=str(row.id),
                        name=row.name,
                        trigger_segment_id=str(row.trigger_segment_id),
                        channels=list(row.channels or ()),  # type: ignore[arg-type]
                        template_id=row.template_id or "",
                        create_time=_timestamp(row.create_time),
                        version=1,
                        state=d.JOURNEY_STATE_PUBLISHED,
                        update_time=_timestamp(row.create_time),
                    )
                )
            if request.draft or row.version == 0:
                if row.draft is None:
                    raise NotFound(
                        message=f"journey {journey_id} has no draft",
                        reason="JOURNEY_DRAFT_NOT_FOUND",
                        metadata={"journey_id": str(journey_id)},
                    )
                return d.GetJourneyResponse(journey=journey_view(row, row.draft, 0))
            version = request.version or row.version
            spec = await self._flows.store.spec(session, journey_id, version)
            if spec is None:
                raise NotFound(
                    message=f"journey {journey_id} has no version {version}",
                    reason="JOURNEY_VERSION_NOT_FOUND",
                    metadata={"journey_id": str(journey_id), "version": str(version)},
                )
            return d.GetJourneyResponse(journey=journey_view(row, spec, version))

    async def UpdateJourneyDraft(
        self, request: d.UpdateJourneyDraftRequest, context: grpc.aio.ServicerContext
    ) -> d.UpdateJourneyDraftResponse:
        """Replace a journey's draft, once per request id."""
        violations = validation.check(request)
        specs.check(request.spec, violations, "spec")
        journey_id = _journey_id(request, violations)
        async with self._runtime.transaction() as session:

            async def update() -> d.UpdateJourneyDraftResponse:
                row = await self._flows.lifecycle.update_draft(session, journey_id, request.spec)
                return d.UpdateJourneyDraftResponse(journey=journey_view(row, row.draft, 0))

            return await idempotent(
                session,
                "UpdateJourneyDraft",
                request.request_id,
                request,
                d.UpdateJourneyDraftResponse,
                update,
            )

    async def PublishJourney(
        self, request: d.PublishJourneyRequest, context: grpc.aio.ServicerContext
    ) -> d.PublishJourneyResponse:
        """Check the draft's references and make it the next version, once per request id."""
        journey_id = _journey_id(request, validation.check(request))
        async with self._runtime.transaction() as session:

            async def publish() -> d.PublishJourneyResponse:
                draft = await self._flows.lifecycle.draft_of(session, journey_id)
                await self._check_references(specs.from_json(draft))
                row = await self._flows.lifecycle.publish(session, journey_id, draft)
                return d.PublishJourneyResponse(journey=journey_view(row, draft, row.version))

            return await idempotent(
                session, "PublishJourney", request.request_id, request, d.PublishJourneyResponse, publish
            )

    async def _check_references(self, spec: d.JourneySpec) -> None:
        """INVALID_ARGUMENT with a violation per segment or template that does not exist, or template without
        a variant for a channel its step sends on."""
        from omni.common.v1 import common_pb2

        violations = Violations()
        references = self._flows.references
        for reference in specs.references(spec):
            if reference.kind == "segment":
                if not await references.segment_exists(reference.value):
                    violations.add(reference.field, f"no segment {reference.value}")
            elif reference.kind == "template":
                channels = await references.template_channels(reference.value)
                if channels is None:
                    violations.add(reference.field, f"no live template {reference.value!r}")
                    continue
                for channel in reference.channels:
                    if channel not in channels:
                        name = common_pb2.Channel.Name(common_pb2.Channel.ValueType(channel))
                        violations.add(
                            reference.field, f"template {reference.value!r} has no variant for {name}"
                        )
        violations.raise_if_any("the journey names what does not exist")

    async def PauseJourney(
        self, request: d.PauseJourneyRequest, context: grpc.aio.ServicerContext
    ) -> d.PauseJourneyResponse:
        """Stop entries and steps at once."""
        journey_id = _journey_id(request, validation.check(request))
        async with self._runtime.transaction() as session:
            row = await self._flows.lifecycle.pause(session, journey_id)
            return d.PauseJourneyResponse(journey=await self._current(session, row))

    async def ResumeJourney(
        self, request: d.ResumeJourneyRequest, context: grpc.aio.ServicerContext
    ) -> d.ResumeJourneyResponse:
        """Let a paused journey go on."""
        journey_id = _journey_id(request, validation.check(request))
        async with self._runtime.transaction() as session:
            row = await self._flows.lifecycle.resume(session, journey_id)
            return d.ResumeJourneyResponse(journey=await self._current(session, row))

    async def ArchiveJourney(
        self, request: d.ArchiveJourneyRequest, context: grpc.aio.ServicerContext
    ) -> d.ArchiveJourneyResponse:
        """End the journey and its runs."""
        journey_id = _journey_id(request, validation.check(request))
        async with self._runtime.transaction() as session:
            row = await self._flows.lifecycle.archive(session, journey_id)
            return d.ArchiveJourneyResponse(journey=await self._current(session, row))

    async def _current(self, session: Any, row: JourneyRow) -> d.Journey:
        spec = await self._flows.store.spec(session, row.id, row.version) if row.version else row.draft
        return journey_view(row, spec, row.version)

    async def TriggerJourney(
        self, request: d.TriggerJourneyRequest, context: grpc.aio.ServicerContext
    ) -> d.TriggerJourneyResponse:
        """Start a run of an API-triggered journey for a person (once per request id)."""
        violations = validation.check(request)
        if request.HasField("properties"):
            size = request.properties.ByteSize()
            if size > MAX_PROPERTIES_BYTES:
                violations.add("properties", f"at most {MAX_PROPERTIES_BYTES} bytes encoded, not {size}")
            else:
                check_json_text(request.properties, "properties", violations)
        journey_id = _journey_id(request, violations)
        person_id = uuid.UUID(request.person_id)
        properties = MessageToDict(request.properties) if request.HasField("properties") else {}
        async with self._runtime.transaction() as session:
            row = await self._flows.store.journey(session, journey_id)
            if row is None:
                raise not_found(journey_id)
            spec = await self._flows.engine.spec(session, journey_id, row.version) if row.version else None
            if spec is None or spec.entry.WhichOneof("kind") != "api":
                raise FailedPrecondition(
                    message=f"journey {journey_id} is not entered by TriggerJourney",
                    reason="JOURNEY_NOT_API_TRIGGERED",
                    metadata={"journey_id": str(journey_id)},
                )
            if row.state != "published":
                raise FailedPrecondition(
                    message=f"journey {journey_id} is {row.state}",
                    reason="JOURNEY_NOT_LIVE",
                    metadata={"journey_id": str(journey_id), "state": row.state},
                )
            person = await self._flows.read_models.person(session, person_id)
            if person is None:
                return d.TriggerJourneyResponse(refusal="the person was forgotten")
            trigger_id = f"api:{request.request_id.strip()}"
            started = await self._flows.engine.enter(
                session, row, person, trigger_id=trigger_id, properties=properties
            )
            if isinstance(started, str):
                existing = await self._flows.store.run_by_trigger(session, journey_id, person, trigger_id)
                if existing is not None:
                    return d.TriggerJourneyResponse(run=run_view(existing, []))
                return d.TriggerJourneyResponse(refusal=started)
            return d.TriggerJourneyResponse(run=run_view(started, []))

    async def ListPersonJourneyRuns(
        self, request: d.ListPersonJourneyRunsRequest, context: grpc.aio.ServicerContext
    ) -> d.ListPersonJourneyRunsResponse:
        """A person's runs, newest first, with the steps each took."""
        violations = validation.check(request)
        before = None
        if request.page_token:
            try:
                before = decode_after(RUNS, request.page_token)
            except PageTokenError:
                violations.add("page_token", "not a token this service issued")
        violations.raise_if_any()
        size = min(request.page_size or 50, 500)
        async with self._runtime.transaction() as session:
            person = await self._flows.read_models.person(session, uuid.UUID(request.person_id))
            if person is None:
                return d.ListPersonJourneyRunsResponse()
            found = await self._flows.store.person_runs(
                session,
                person,
                journey_id=uuid.UUID(request.journey_id) if request.journey_id else None,
                before=before,
                limit=size + 1,
            )
        page = found[:size]
        return d.ListPersonJourneyRunsResponse(
            runs=[run_view(run, steps) for run, steps in page],
            next_page_token=encode_after(RUNS, page[-1][0].id) if len(found) > size else "",
        )
