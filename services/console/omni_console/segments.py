"""Segments: the list with sizes, a segment's size over time, a rule's live preview, why a person is in or
out, and the members as a file."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from google.protobuf import json_format

from omni.segmentation.v1 import segmentation_pb2
from omni_console.calls import Part, describe, fetch
from omni_console.clients import Clients

READ = "segmentation.segments:read"
MEMBERS = "segmentation.memberships:read"
EXPORT_TIMEOUT_S = 600.0
"""An export of a large segment streams for a while; the default deadline is for page reads."""

EXAMPLE_RULE = {
    "all": {
        "conditions": [
            {
                "event_count": {
                    "event_type": "order_completed",
                    "window": "2592000s",
                    "comparison": "COMPARISON_GTE",
                    "count": 1,
                }
            },
            {
                "contact": {
                    "channel": "CHANNEL_EMAIL",
                    "purpose": "CONSENT_PURPOSE_MARKETING",
                    "allowed": True,
                }
            },
        ]
    }
}
"""What the rule editor starts with: bought in the last 30 days and may be emailed marketing."""


@dataclass(frozen=True)
class SegmentRow:
    """A segment of the list with its member count."""

    segment: segmentation_pb2.Segment
    members: Part[int]


async def listing(clients: Clients) -> Part[list[SegmentRow]]:
    """The live segments, each with its member count (counted at once, one call each)."""
    response = await fetch(
        clients,
        READ,
        lambda: clients.segmentation.ListSegments(segmentation_pb2.ListSegmentsRequest(page_size=500)),
    )
    if response.value is None:
        return Part(problem=response.problem, denied=response.denied)
    segments = [s for s in response.value.segments if not s.HasField("archive_time")]
    counts = await asyncio.gather(*(count(clients, s.id) for s in segments))
    return Part([SegmentRow(s, c) for s, c in zip(segments, counts, strict=True)])


async def count(clients: Clients, segment_id: str) -> Part[int]:
    """A segment's member count."""

    async def call() -> int:
        request = segmentation_pb2.CountSegmentMembersRequest(segment_id=segment_id)
        return int((await clients.segmentation.CountSegmentMembers(request)).member_count)

    return await fetch(clients, MEMBERS, call)


async def segment(clients: Clients, segment_id: str) -> Part[segmentation_pb2.Segment]:
    """One segment."""

    async def call() -> segmentation_pb2.Segment:
        request = segmentation_pb2.GetSegmentRequest(segment_id=segment_id)
        return (await clients.segmentation.GetSegment(request)).segment

    return await fetch(clients, READ, call)


async def sizes(clients: Clients, segment_id: str, days: int = 30) -> Part[list[tuple[str, int]]]:
    """The segment's members per day, oldest first."""

    async def call() -> list[tuple[str, int]]:
        request = segmentation_pb2.ListSegmentSizesRequest(segment_id=segment_id, days=days)
        response = await clients.segmentation.ListSegmentSizes(request)
        return [(size.day, int(size.member_count)) for size in response.sizes]

    return await fetch(clients, READ, call)


def rule_text(condition: segmentation_pb2.Condition) -> str:
    """A rule as the editor shows it: the condition's protobuf JSON, indented."""
    return json.dumps(json_format.MessageToDict(condition), indent=2)


class RuleError(ValueError):
    """The editor's text is no condition; the message says where."""


def parse_rule(text: str) -> segmentation_pb2.Condition:
    """The editor's text (a condition in protobuf JSON) as a Condition; RuleError when it is none."""
    try:
        return json_format.Parse(text, segmentation_pb2.Condition())
    except json_format.ParseError as error:
        raise RuleError(str(error)) from error


@dataclass(frozen=True)
class Preview:
    """How many persons a rule matches now, some of them, per condition, and the service's warnings."""

    response: segmentation_pb2.PreviewSegmentResponse | None
    problem: str | None = None
    violations: tuple[tuple[str, str], ...] = ()


async def preview(clients: Clients, text: str, sample_size: int = 10) -> Preview:
    """The segmentation service's preview of the rule in the editor."""
    if not clients.allows(READ):
        return Preview(None, f"the console's credentials do not hold {READ}")
    try:
        condition = parse_rule(text)
    except RuleError as error:
        return Preview(None, f"not a rule: {error}")
    try:
        response = await clients.segmentation.PreviewSegment(
            segmentation_pb2.PreviewSegmentRequest(condition=condition, sample_size=sample_size)
        )
    except grpc.aio.AioRpcError as error:
        return Preview(None, describe(error), field_violations(error))
    return Preview(response)


def field_violations(error: grpc.aio.AioRpcError) -> tuple[tuple[str, str], ...]:
    """The (field, description) pairs of an INVALID_ARGUMENT's BadRequest, for the editor to list."""
    from google.rpc import error_details_pb2, status_pb2

    for key, value in error.trailing_metadata() or ():
        if key != "grpc-status-details-bin" or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                return tuple((v.field, v.description) for v in bad.field_violations)
    return ()


async def explain(
    clients: Clients, segment_id: str, person_id: str
) -> Part[segmentation_pb2.ExplainSegmentMembershipResponse]:
    """Why the person is in the segment or not, condition by condition."""
    return await fetch(
        clients,
        MEMBERS,
        lambda: clients.segmentation.ExplainSegmentMembership(
            segmentation_pb2.ExplainSegmentMembershipRequest(segment_id=segment_id, person_id=person_id)
        ),
    )


async def export_lines(clients: Clients, segment_id: str) -> AsyncIterator[str]:
    """The members as CSV lines (person_id), streamed from the service as it sends them."""
    yield "person_id\n"
    stream = clients.segmentation.ExportSegmentMembers(
        segmentation_pb2.ExportSegmentMembersRequest(segment_id=segment_id), timeout=EXPORT_TIMEOUT_S
    )
    async for chunk in stream:
        yield "".join(f"{person_id}\n" for person_id in chunk.person_ids)
