"""What a new journey or offer names must exist: its segment (segmentation) and its template (the gateway).

Checked when a journey or offer is created, by asking the owners over gRPC (GetSegment, GetTemplate). A
create is not a hot path, and asking the owner is the only answer that is right at once: a read model fed by
events would refuse a segment created a moment ago, and segmentation announces no segment until a person
enters it. Decide never calls out: it reads only decisioning's own tables.

A journey sends its one template on the channel it chooses, so the template's channel must be one of the
journey's channels: an SMS template on an email journey could never be sent.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import grpc

from omni.common.v1 import common_pb2
from omni.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from omni.segmentation.v1 import segmentation_pb2, segmentation_pb2_grpc
from omni_kit.errors import FailedPrecondition, NotFound, Unavailable

SEGMENTATION_SERVICE = "omni.segmentation.v1.SegmentationService"
GATEWAY_SERVICE = "omni.gateway.v1.GatewayService"


def _name(channel: int) -> str:
    try:
        return common_pb2.Channel.Name(common_pb2.Channel.ValueType(channel))
    except ValueError:
        return str(channel)


class References:
    """Asks segmentation and the gateway whether what a journey or offer names exists."""

    def __init__(
        self,
        segmentation: segmentation_pb2_grpc.SegmentationServiceAsyncStub,
        gateway: gateway_pb2_grpc.GatewayServiceAsyncStub,
    ) -> None:
        self._segmentation = segmentation
        self._gateway = gateway

    async def check_segment(self, segment_id: uuid.UUID, field: str) -> None:
        """NotFound (SEGMENT_NOT_FOUND, with the request field) unless segmentation knows the segment."""
        try:
            await self._segmentation.GetSegment(
                segmentation_pb2.GetSegmentRequest(segment_id=str(segment_id))
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(
                    message=f"{field}: no segment {segment_id}",
                    reason="SEGMENT_NOT_FOUND",
                    metadata={"segment_id": str(segment_id), "field": field},
                ) from error
            raise _unavailable("segmentation", error) from error

    async def check_template(self, template_id: str, field: str) -> None:
        """NotFound (TEMPLATE_NOT_FOUND, with the request field) unless the gateway knows the template."""
        try:
            await self._gateway.GetTemplate(gateway_pb2.GetTemplateRequest(template_id=template_id))
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(
                    message=f"{field}: no template {template_id!r}",
                    reason="TEMPLATE_NOT_FOUND",
                    metadata={"template_id": template_id, "field": field},
                ) from error
            raise _unavailable("the gateway", error) from error

    async def check_journey(self, segment_id: uuid.UUID, template_id: str, channels: Sequence[int]) -> None:
        """The journey's segment and template exist and the template has a variant for one of its channels.

        NotFound (SEGMENT_NOT_FOUND, TEMPLATE_NOT_FOUND) or FailedPrecondition (TEMPLATE_CHANNEL_MISMATCH),
        each naming the request field in its metadata; Unavailable when segmentation or the gateway cannot
        answer.
        """
        await self.check_segment(segment_id, "journey.trigger_segment_id")
        try:
            response = await self._gateway.GetTemplate(
                gateway_pb2.GetTemplateRequest(template_id=template_id)
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(
                    message=f"journey.template_id: no template {template_id!r}",
                    reason="TEMPLATE_NOT_FOUND",
                    metadata={"template_id": template_id, "field": "journey.template_id"},
                ) from error
            raise _unavailable("the gateway", error) from error
        # The channels the template has variants for (a template written for one channel: that one).
        template_channels = list(response.template.channels) or [response.template.channel]
        if not set(template_channels) & set(channels):
            named = ", ".join(_name(c) for c in template_channels)
            raise FailedPrecondition(
                message=(
                    f"journey.template_id: template {template_id!r} is for {named}, "
                    f"which is none of the journey's channels ({', '.join(_name(c) for c in channels)})"
                ),
                reason="TEMPLATE_CHANNEL_MISMATCH",
                metadata={
                    "field": "journey.template_id",
                    "template_id": template_id,
                    "template_channel": named,
                },
            )

    async def segment_exists(self, segment_id: str) -> bool:
        """Whether segmentation knows the segment (Unavailable when it cannot answer)."""
        try:
            await self._segmentation.GetSegment(segmentation_pb2.GetSegmentRequest(segment_id=segment_id))
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise _unavailable("segmentation", error) from error
        return True

    async def template_channels(self, template_id: str) -> list[int] | None:
        """The channels a live template has variants for; None when the gateway has no such template or it
        is archived (Unavailable when it cannot answer)."""
        try:
            response = await self._gateway.GetTemplate(
                gateway_pb2.GetTemplateRequest(template_id=template_id)
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise _unavailable("the gateway", error) from error
        if response.template.HasField("archive_time"):
            return None
        return list(response.template.channels) or [response.template.channel]


def _unavailable(service: str, error: grpc.aio.AioRpcError) -> Unavailable:
    return Unavailable(
        message=f"{service} could not be asked whether the references exist: {error.code().name}",
        reason="DEPENDENCY_UNAVAILABLE",
        metadata={"service": service},
    )
