"""Computed traits (profile): named by `name`. Profile can create and list them, not change or remove
them: apply creates the missing ones and reports a changed one as a difference it cannot apply."""

from __future__ import annotations

from google.protobuf.message import Message

from omni.profile.v1 import profile_pb2 as pb
from omni.profile.v1 import profile_pb2_grpc as grpc_pb
from omni_kit.commands.connect import Clients
from omni_kit.commands.kinds import Kind, list_all


class ComputedTraits(Kind):
    """Traits profile keeps computed from events (counts, sums, first/last, lifetime value …)."""

    name = "ComputedTrait"
    plural = "computed_traits"
    service = "profile"
    message = pb.ComputedTrait
    spec_fields = (
        "name",
        "kind",
        "event_type",
        "channels",
        "property",
        "window_days",
        "per_channel",
        "currency_code",
        "description",
    )
    can_update = False
    can_archive = False

    def _stub(self, clients: Clients) -> grpc_pb.ProfileServiceStub:
        return grpc_pb.ProfileServiceStub(clients.channel(self.service))

    async def list_live(self, clients: Clients) -> list[Message]:
        return await list_all(
            self._stub(clients).ListComputedTraits, pb.ListComputedTraitsRequest(), "computed_traits"
        )

    async def create(self, clients: Clients, desired: Message) -> Message:
        request = pb.CreateComputedTraitRequest(
            computed_trait=desired, request_id=self.request_id("create", desired)
        )
        return (await self._stub(clients).CreateComputedTrait(request)).computed_trait


KIND = ComputedTraits()
