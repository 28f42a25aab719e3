"""Conversion definitions (decisioning's ReportService): what counts as a conversion. Named by `name`.
Reports can create and list them, not change or remove them: apply creates the missing ones and reports a
changed one as a difference it cannot apply (define it under a new name)."""

from __future__ import annotations

from typing import Any

from google.protobuf.message import Message

from omni.decisioning.v1 import reports_pb2 as pb
from omni.decisioning.v1 import reports_pb2_grpc as grpc_pb
from omni_kit.commands.connect import Clients
from omni_kit.commands.kinds import Kind, list_all


class ConversionDefinitions(Kind):
    """Which events of a person count as a conversion, within how long after a touch."""

    name = "ConversionDefinition"
    plural = "conversion_definitions"
    service = "decisioning"
    message = pb.ConversionDefinition
    spec_fields = ("name", "event_type", "filters", "window_s", "anchor", "revenue_property", "currency")
    can_update = False
    can_archive = False

    def spec(self, resource: Message) -> dict[str, Any]:
        """The delivery anchor (the one an unset anchor means, which the service stores) is left out."""
        data = super().spec(resource)
        if data.get("anchor") == "CONVERSION_ANCHOR_DELIVERY":
            del data["anchor"]
        return data

    def _stub(self, clients: Clients) -> grpc_pb.ReportServiceStub:
        return grpc_pb.ReportServiceStub(clients.channel(self.service))

    async def list_live(self, clients: Clients) -> list[Message]:
        return await list_all(
            self._stub(clients).ListConversionDefinitions,
            pb.ListConversionDefinitionsRequest(),
            "definitions",
        )

    async def create(self, clients: Clients, desired: Message) -> Message:
        assert isinstance(desired, pb.ConversionDefinition)
        request = pb.CreateConversionDefinitionRequest(definition=desired)
        return (await self._stub(clients).CreateConversionDefinition(request)).definition


KIND = ConversionDefinitions()
