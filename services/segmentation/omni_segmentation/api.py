"""The gRPC servicer of omni.segmentation.v1.SegmentationService: validation and protobuf ⇄ domain only."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf import json_format

from omni.segmentation.v1 import segmentation_pb2 as pb
from omni.segmentation.v1 import segmentation_pb2_grpc
from omni_kit import validation
from omni_kit.errors import Violations
from omni_kit.idempotency import idempotent
from omni_kit.ids import parse_uuid
from omni_kit.paging import PageTokenError, decode_after, encode_after
from omni_kit.runtime import Runtime
from omni_segmentation import conditions
from omni_segmentation.catalog import SegmentCatalog
from omni_segmentation.events import current_trace_context
from omni_segmentation.explain import Explanation, explain
from omni_segmentation.membership import MembershipEvaluator, load_facts
from omni_segmentation.preview import preview
from omni_segmentation.records import PersonRecord, SegmentRecord
from omni_segmentation.repository import Repository
from omni_segmentation.vocabulary import Vocabulary, Warning

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
DEFAULT_MEMBERS_PAGE_SIZE = 100
MAX_MEMBERS_PAGE_SIZE = 1_000
EXPORT_CHUNK = 1_000
DEFAULT_SAMPLE_SIZE = 10
DEFAULT_SIZE_DAYS = 30
UPDATABLE = ("name", "description", "condition")
_SEGMENTS = "segmentation.segments"
_MEMBERS = "segmentation.members"


def encode_page_token(after: uuid.UUID, kind: str = _SEGMENTS) -> str:
    """An opaque token continuing a listing after the given segment (or member)."""
    return encode_after(kind, after)


def decode_page_token(token: str, kind: str = _SEGMENTS) -> uuid.UUID | None:
    """The id a token continues after; None when the token is not one of ours."""
    try:
        return decode_after(kind, token)
    except PageTokenError:
        return None


def segment_message(record: SegmentRecord) -> pb.Segment:
    """The wire form of a stored segment."""
    message = pb.Segment(
        id=str(record.id),
        name=record.name,
        description=record.description,
        condition=conditions.from_json(record.condition),
        version=record.version,
    )
    message.create_time.FromDatetime(record.created_at)
    message.update_time.FromDatetime(record.updated_at or record.created_at)
    if record.archived_at is not None:
        message.archive_time.FromDatetime(record.archived_at)
    return message


def warning_messages(warnings: list[Warning]) -> list[pb.RuleWarning]:
    """The wire form of rule warnings."""
    return [pb.RuleWarning(field=w.field, description=w.description) for w in warnings]


def explanation_message(node: Explanation) -> pb.ConditionExplanation:
    """The wire form of an explained condition node."""
    message = pb.ConditionExplanation(
        field=node.field,
        kind=node.kind,
        holds=node.holds,
        summary=node.summary,
        children=[explanation_message(c) for c in node.children],
        count=node.count,
        sum=node.sum,
    )
    if node.has_trait_value:
        json_format.ParseDict(node.trait_value, message.trait_value)
    if node.last_event_at is not None:  # the first event's time, for first_event
        message.last_event_time.FromDatetime(node.last_event_at)
    return message


def validate_segment(request: pb.CreateSegmentRequest) -> None:
    """Raise InvalidArgument naming every malformed field of a segment to create: what segmentation.proto
    declares (the request id's rules too), and what conditions.validate_condition adds for the condition."""
    segment = request.segment
    # The tree is left to validate_condition, which bounds its size before anything walks it whole: the rest
    # of the request is checked with a one-node condition standing in for it.
    outline = pb.CreateSegmentRequest(request_id=request.request_id)
    if request.HasField("segment"):
        outline.segment.SetInParent()
        outline.segment.name = segment.name
        outline.segment.description = segment.description
        if segment.HasField("condition"):
            outline.segment.condition.cart.comparison = pb.COMPARISON_GTE
    violations = validation.check(outline)
    if segment.HasField("condition"):
        conditions.validate_condition(segment.condition, "segment.condition", violations)
    violations.raise_if_any("the segment is invalid")


def validate_update(request: pb.UpdateSegmentRequest) -> set[str]:
    """The paths an update changes; raise InvalidArgument naming every malformed field: the mask, what
    segmentation.proto declares of the fields it names (through omni_kit.validation.check_update), the id,
    and the condition as at CreateSegment when the mask names it."""
    segment = request.segment
    outline = pb.UpdateSegmentRequest(
        update_mask=request.update_mask,
        expected_version=request.expected_version,
        request_id=request.request_id,
    )
    if request.HasField("segment"):
        outline.segment.SetInParent()
        outline.segment.id = segment.id
        outline.segment.name = segment.name
        outline.segment.description = segment.description
        if segment.HasField("condition"):
            outline.segment.condition.cart.comparison = pb.COMPARISON_GTE
    paths, violations = validation.check_update(outline, "segment", request.update_mask, UPDATABLE)
    if request.HasField("segment"):
        violations.check(
            parse_uuid(segment.id) is not None, "segment.id", "the segment's id (a UUID) is required"
        )
    if "condition" in paths and segment.HasField("condition"):
        conditions.validate_condition(segment.condition, "segment.condition", violations)
    violations.raise_if_any("the update is invalid")
    return paths


def _page_size(requested: int, default: int, largest: int) -> int:
    return min(requested or default, largest)


class SegmentationServicer(segmentation_pb2_grpc.SegmentationServiceServicer):
    """Defines segments and answers who is in which."""

    def __init__(
        self,
        runtime: Runtime,
        repository: Repository,
        catalog: SegmentCatalog,
        evaluator: MembershipEvaluator,
        vocabulary: Vocabulary,
        on_segment_created: Callable[[], None],
    ) -> None:
        self._runtime = runtime
        self._repository = repository
        self._catalog = catalog
        self._evaluator = evaluator
        self._vocabulary = vocabulary
        self._on_segment_created = on_segment_created

    async def CreateSegment(
        self, request: pb.CreateSegmentRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateSegmentResponse:
        """Validate and store a segment, once per request id; the persons known so far are evaluated right
        after (backfill)."""
        validate_segment(request)
        segment = request.segment
        async with self._runtime.transaction() as session:

            async def create() -> pb.CreateSegmentResponse:
                record = await self._catalog.create(
                    session,
                    name=segment.name,
                    description=segment.description,
                    condition=segment.condition,
                    trace_context=current_trace_context(),
                )
                warnings = await self._vocabulary.warnings(session, segment.condition, "segment.condition")
                return pb.CreateSegmentResponse(
                    segment=segment_message(record), warnings=warning_messages(warnings)
                )

            response = await idempotent(
                session, "CreateSegment", request.request_id, request, pb.CreateSegmentResponse, create
            )
        self._on_segment_created()
        return response

    async def GetSegment(
        self, request: pb.GetSegmentRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetSegmentResponse:
        """One segment by id."""
        validation.validate(request)
        segment_id = uuid.UUID(request.segment_id)
        async with self._runtime.transaction() as session:
            record = await self._catalog.get(session, segment_id)
        return pb.GetSegmentResponse(segment=segment_message(record))

    async def ListSegments(
        self, request: pb.ListSegmentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSegmentsResponse:
        """A page of segments, oldest first."""
        violations = validation.check(request)
        after = decode_page_token(request.page_token) if request.page_token else None
        violations.check(
            not request.page_token or after is not None, "page_token", "not a token from an earlier page"
        )
        violations.raise_if_any()
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        async with self._runtime.transaction() as session:
            records, next_after = await self._catalog.page(session, after=after, size=size)
        return pb.ListSegmentsResponse(
            segments=[segment_message(r) for r in records],
            next_page_token=encode_page_token(next_after) if next_after is not None else "",
        )

    async def ListPersonSegments(
        self, request: pb.ListPersonSegmentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListPersonSegmentsResponse:
        """The segments a person is in now; a person segmentation has not heard of is in none."""
        validation.validate(request)
        person_id = uuid.UUID(request.person_id)
        async with self._runtime.transaction() as session:
            memberships = await self._repository.person_memberships(session, person_id)
        response = pb.ListPersonSegmentsResponse()
        for membership in memberships:
            item = response.memberships.add(
                segment_id=str(membership.segment_id), segment_name=membership.segment_name
            )
            item.enter_time.FromDatetime(membership.entered_at)
        return response

    async def UpdateSegment(
        self, request: pb.UpdateSegmentRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateSegmentResponse:
        """Change a segment, once per request id; a changed condition is a new version, evaluated again for
        every known person (entries and exits announced for the difference)."""
        paths = validate_update(request)
        segment = request.segment
        async with self._runtime.transaction() as session:

            async def update() -> pb.UpdateSegmentResponse:
                outcome = await self._catalog.update(
                    session,
                    uuid.UUID(segment.id),
                    paths=paths,
                    name=segment.name,
                    description=segment.description,
                    condition=segment.condition,
                    expected_version=request.expected_version,
                    trace_context=current_trace_context(),
                )
                warnings = await self._vocabulary.warnings(
                    session, conditions.from_json(outcome.record.condition), "segment.condition"
                )
                return pb.UpdateSegmentResponse(
                    segment=segment_message(outcome.record), warnings=warning_messages(warnings)
                )

            response = await idempotent(
                session, "UpdateSegment", request.request_id, request, pb.UpdateSegmentResponse, update
            )
        self._on_segment_created()
        return response

    async def ArchiveSegment(
        self, request: pb.ArchiveSegmentRequest, context: grpc.aio.ServicerContext
    ) -> pb.ArchiveSegmentResponse:
        """Archive a segment, once per request id: its members exit, each announced."""
        validation.validate(request)
        segment_id = uuid.UUID(request.segment_id)
        async with self._runtime.transaction() as session:

            async def archive() -> pb.ArchiveSegmentResponse:
                now = datetime.now(UTC)
                record, exited = await self._catalog.archive(session, segment_id, now)
                await self._evaluator.announce_exits(session, self._catalog.parsed(record), exited, now)
                return pb.ArchiveSegmentResponse(segment=segment_message(record), exited_count=len(exited))

            return await idempotent(
                session, "ArchiveSegment", request.request_id, request, pb.ArchiveSegmentResponse, archive
            )

    async def ListSegmentMembers(
        self, request: pb.ListSegmentMembersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSegmentMembersResponse:
        """A page of a segment's members, in person id order."""
        violations = validation.check(request)
        after = decode_page_token(request.page_token, _MEMBERS) if request.page_token else None
        violations.check(
            not request.page_token or after is not None, "page_token", "not a token from an earlier page"
        )
        violations.raise_if_any()
        size = _page_size(request.page_size, DEFAULT_MEMBERS_PAGE_SIZE, MAX_MEMBERS_PAGE_SIZE)
        segment_id = uuid.UUID(request.segment_id)
        async with self._runtime.transaction() as session:
            await self._catalog.get(session, segment_id)
            rows = await self._repository.segment_members(session, segment_id, after=after, limit=size + 1)
        response = pb.ListSegmentMembersResponse()
        for person_id, entered_at in rows[:size]:
            member = response.members.add(person_id=str(person_id))
            member.enter_time.FromDatetime(entered_at)
        if len(rows) > size:
            response.next_page_token = encode_page_token(rows[size - 1][0], _MEMBERS)
        return response

    async def CountSegmentMembers(
        self, request: pb.CountSegmentMembersRequest, context: grpc.aio.ServicerContext
    ) -> pb.CountSegmentMembersResponse:
        """How many members a segment has now."""
        validation.validate(request)
        segment_id = uuid.UUID(request.segment_id)
        async with self._runtime.transaction() as session:
            await self._catalog.get(session, segment_id)
            count = await self._repository.count_members(session, segment_id)
        return pb.CountSegmentMembersResponse(member_count=count)

    async def ExportSegmentMembers(
        self, request: pb.ExportSegmentMembersRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ExportSegmentMembersResponse]:
        """Every member's id, in chunks, in person id order; each chunk read in a short transaction of its
        own, so an export of millions holds no transaction open (a person entering or leaving meanwhile
        appears as of when its chunk was read)."""
        validation.validate(request)
        segment_id = uuid.UUID(request.segment_id)
        async with self._runtime.transaction() as session:
            await self._catalog.get(session, segment_id)
        after: uuid.UUID | None = None
        while True:
            async with self._runtime.transaction() as session:
                rows = await self._repository.segment_members(
                    session, segment_id, after=after, limit=EXPORT_CHUNK
                )
            if rows:
                yield pb.ExportSegmentMembersResponse(person_ids=[str(p) for p, _ in rows])
            if len(rows) < EXPORT_CHUNK:
                return
            after = rows[-1][0]

    async def PreviewSegment(
        self, request: pb.PreviewSegmentRequest, context: grpc.aio.ServicerContext
    ) -> pb.PreviewSegmentResponse:
        """What a condition would select now, without creating a segment."""
        violations = Violations()
        outline = pb.PreviewSegmentRequest(sample_size=request.sample_size)
        if request.HasField("condition"):
            outline.condition.cart.comparison = pb.COMPARISON_GTE
        validation.check(outline, violations)
        if request.HasField("condition"):
            conditions.validate_condition(request.condition, "condition", violations)
        violations.raise_if_any("the condition is invalid")
        rule = conditions.to_rules(request.condition)
        async with self._runtime.transaction() as session:
            result = await preview(
                self._repository,
                session,
                rule,
                path="condition",
                sample_size=request.sample_size or DEFAULT_SAMPLE_SIZE,
                now=datetime.now(UTC),
            )
            warnings = await self._vocabulary.warnings(session, request.condition, "condition")
        return pb.PreviewSegmentResponse(
            match_count=result.match_count,
            sample_person_ids=[str(p) for p in result.sample],
            condition_counts=[pb.ConditionCount(field=f, match_count=c) for f, c in result.condition_counts],
            evaluated_count=result.evaluated_count,
            warnings=warning_messages(warnings),
        )

    async def ExplainSegmentMembership(
        self, request: pb.ExplainSegmentMembershipRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExplainSegmentMembershipResponse:
        """Why a person is in or out of a segment, node by node, and since when."""
        validation.validate(request)
        segment_id, person_id = uuid.UUID(request.segment_id), uuid.UUID(request.person_id)
        now = datetime.now(UTC)
        async with self._runtime.transaction() as session:
            record = await self._catalog.get(session, segment_id)
            segment = self._catalog.parsed(record)
            persons = await self._repository.read_persons(session, [person_id])
            known = persons or {person_id: PersonRecord(person_id)}
            facts = await load_facts(
                self._repository, session, known, self._catalog.requirements([segment]), now
            )
            entered, exited = await self._repository.membership_times(session, segment_id, person_id)
            names = {s.id: s.name for s in await self._catalog.segments(session)}
        response = pb.ExplainSegmentMembershipResponse(
            member=entered is not None,
            condition=explanation_message(
                explain(segment.condition, facts[person_id], now, "condition", names)
            ),
            version=record.version,
        )
        since = entered if entered is not None else exited
        if since is not None:
            response.since_time.FromDatetime(since)
        return response

    async def ListSegmentSizes(
        self, request: pb.ListSegmentSizesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSegmentSizesResponse:
        """A segment's recorded size per day, oldest first."""
        validation.validate(request)
        segment_id = uuid.UUID(request.segment_id)
        today = datetime.now(UTC).date()
        since = today - timedelta(days=(request.days or DEFAULT_SIZE_DAYS) - 1)
        async with self._runtime.transaction() as session:
            await self._catalog.get(session, segment_id)
            sizes = await self._repository.sizes(session, segment_id, since)
        return pb.ListSegmentSizesResponse(
            sizes=[pb.SegmentSize(day=day.isoformat(), member_count=count) for day, count in sizes]
        )
