"""Message templates (gateway): named by their `id` (chosen by the author); UpdateTemplate stores a new
version, ArchiveTemplate prunes. A template's channel cannot change: apply reports it and changes nothing."""

from __future__ import annotations

from typing import Any

from google.protobuf import field_mask_pb2
from google.protobuf.message import Message

from omni.gateway.v1 import gateway_pb2 as pb
from omni.gateway.v1 import gateway_pb2_grpc as grpc_pb
from omni_kit.commands.connect import Clients, CommandError
from omni_kit.commands.kinds import Kind, list_all


class Templates(Kind):
    """Liquid templates per channel (and locale, in variants)."""

    name = "Template"
    plural = "templates"
    service = "gateway"
    message = pb.Template
    key = "id"
    spec_fields = ("id", "channel", "subject", "body_text", "body_html", "variants")

    def spec(self, resource: Message) -> dict[str, Any]:
        """A template written without variants (one channel, subject and bodies) is shown that way: the
        service adds the variant those stand for, which the author did not write."""
        data = super().spec(resource)
        if data.get("channel"):
            data.pop("variants", None)
        return data

    def _stub(self, clients: Clients) -> grpc_pb.GatewayServiceStub:
        return grpc_pb.GatewayServiceStub(clients.channel(self.service))

    async def list_live(self, clients: Clients) -> list[Message]:
        return await list_all(self._stub(clients).ListTemplates, pb.ListTemplatesRequest(), "templates")

    async def create(self, clients: Clients, desired: Message) -> Message:
        request = pb.CreateTemplateRequest(template=desired, request_id=self.request_id("create", desired))
        return (await self._stub(clients).CreateTemplate(request)).template

    async def update(self, clients: Clients, live: Message, desired: Message, mask: list[str]) -> Message:
        assert isinstance(live, pb.Template) and isinstance(desired, pb.Template)
        if "channel" in mask:
            raise CommandError(f"template {live.id}: its channel cannot change; archive it and use a new id")
        request = pb.UpdateTemplateRequest(
            template=desired,
            update_mask=field_mask_pb2.FieldMask(paths=mask),
            expected_version=live.version,
            request_id=self.request_id("update", desired, live),
        )
        return (await self._stub(clients).UpdateTemplate(request)).template

    async def archive(self, clients: Clients, live: Message) -> None:
        assert isinstance(live, pb.Template)
        await self._stub(clients).ArchiveTemplate(pb.ArchiveTemplateRequest(template_id=live.id))


KIND = Templates()
