"""One-message journeys (decisioning): a trigger segment, channels and one template. Named by `name`.
Decisioning can create and list them, not change them: apply creates the missing ones and reports a changed
one as a difference it cannot apply. Multi-step journeys (a `spec`) are the MultiStepJourney kind."""

from __future__ import annotations

from google.protobuf.message import Message

from omni.decisioning.v1 import decisioning_pb2 as pb
from omni.decisioning.v1 import decisioning_pb2_grpc as grpc_pb
from omni_kit.commands.connect import Clients
from omni_kit.commands.kinds import Kind, list_all


class Journeys(Kind):
    """Triggered journeys."""

    name = "Journey"
    plural = "journeys"
    service = "decisioning"
    references = {"trigger_segment": ("trigger_segment_id", "Segment")}
    message = pb.Journey
    spec_fields = ("name", "trigger_segment_id", "channels", "template_id")
    can_update = False
    can_archive = False

    def _stub(self, clients: Clients) -> grpc_pb.DecisioningServiceStub:
        return grpc_pb.DecisioningServiceStub(clients.channel(self.service))

    async def list_live(self, clients: Clients) -> list[Message]:
        journeys = await list_all(self._stub(clients).ListJourneys, pb.ListJourneysRequest(), "journeys")
        return [j for j in journeys if j.template_id]  # a multi-step journey names its templates in its steps

    async def create(self, clients: Clients, desired: Message) -> Message:
        request = pb.CreateJourneyRequest(journey=desired, request_id=self.request_id("create", desired))
        return (await self._stub(clients).CreateJourney(request)).journey


KIND = Journeys()
