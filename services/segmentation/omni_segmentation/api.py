"""The gRPC servicer of omni.segmentation.v1.SegmentationService: validation and protobuf ⇄ domain only."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import grpc

from omni.segmentation.v1 import segmentation_pb2 as pb
from omni.segmentation.v1 import segmentation_pb2_grpc
from omni_kit import validation
from omni_kit.idempotency import idempotent
from omni_kit.paging import PageTokenError, decode_after, encode_after
from omni_kit.runtime import Runtime
from omni_segmentation import conditions
from omni_segmentation.catalog import SegmentCatalog
from omni_segmentation.events import current_trace_context
from omni_segmentation.records import SegmentRecord
from omni_segmentation.repository import Repository

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
_SEGMENTS = "segmentation.segments"


def encode_page_token(after: uuid.UUID) -> str:
    """An opaque token continuing a listing after the given segment."""
    return encode_after(_SEGMENTS, after)


def decode_page_token(token: str) -> uuid.UUID | None:
    """The segment id a token continues after; None when the token is not one of ours."""
    try:
        return decode_after(_SEGMENTS, token)
    except PageTokenError:
        return None


def segment_message(record: SegmentRecord) -> pb.Segment:
    """The wire form of a stored segment."""
    message = pb.Segment(
        id=str(record.id),
        name=record.name,
        description=record.description,
        condition=conditions.from_json(record.condition),
    )
    message.create_time.FromDatetime(record.created_at)
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


class SegmentationServicer(segmentation_pb2_grpc.SegmentationServiceServicer):
    """Defines segments and answers who is in which."""

    def __init__(
        self,
        runtime: Runtime,
        repository: Repository,
        catalog: SegmentCatalog,
        on_segment_created: Callable[[], None],
    ) -> None:
        self._runtime = runtime
        self._repository = repository
        self._catalog = catalog
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
                return pb.CreateSegmentResponse(segment=segment_message(record))

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
