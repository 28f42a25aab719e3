"""Segments (segmentation): named by `name`; updated with UpdateSegment, pruned with ArchiveSegment."""

from __future__ import annotations

from google.protobuf import field_mask_pb2
from google.protobuf.message import Message

from omni.segmentation.v1 import segmentation_pb2 as pb
from omni.segmentation.v1 import segmentation_pb2_grpc as grpc_pb
from omni_kit.commands.connect import Clients
from omni_kit.commands.kinds import Kind, list_all


class Segments(Kind):
    """Rule segments."""

    name = "Segment"
    plural = "segments"
    service = "segmentation"
    message = pb.Segment
    spec_fields = ("name", "description", "condition")

    def _stub(self, clients: Clients) -> grpc_pb.SegmentationServiceStub:
        return grpc_pb.SegmentationServiceStub(clients.channel(self.service))

    async def list_live(self, clients: Clients) -> list[Message]:
        segments = await list_all(self._stub(clients).ListSegments, pb.ListSegmentsRequest(), "segments")
        return [s for s in segments if not s.HasField("archive_time")]

    async def create(self, clients: Clients, desired: Message) -> Message:
        request = pb.CreateSegmentRequest(segment=desired, request_id=self.request_id("create", desired))
        return (await self._stub(clients).CreateSegment(request)).segment

    async def update(self, clients: Clients, live: Message, desired: Message, mask: list[str]) -> Message:
        assert isinstance(live, pb.Segment) and isinstance(desired, pb.Segment)
        segment = pb.Segment()
        segment.CopyFrom(desired)
        segment.id = live.id
        request = pb.UpdateSegmentRequest(
            segment=segment,
            update_mask=field_mask_pb2.FieldMask(paths=mask),
            expected_version=live.version,
            request_id=self.request_id("update", desired, live),
        )
        return (await self._stub(clients).UpdateSegment(request)).segment

    async def archive(self, clients: Clients, live: Message) -> None:
        assert isinstance(live, pb.Segment)
        await self._stub(clients).ArchiveSegment(pb.ArchiveSegmentRequest(segment_id=live.id))


KIND = Segments()
