"""Multi-step journeys (decisioning): a graph of steps, versioned. Named by `name`; the rest of the YAML spec
is the journey's `JourneySpec` (entry, entry_rule, steps, exit_criteria, enter_existing_members,
version_policy), segments named by name (`entry: {segment: {segment: buyers}}`, a campaign's `segment`, a
condition's `in_segment`), templates by their id as always.

What a file describes is the published journey: the live object compared with it is the latest published
version (or, for a journey never published, its draft). Apply creates a missing journey (CreateJourney, a
draft) and publishes it; for one that differs it replaces the draft (UpdateJourneyDraft) and publishes it as
the next version, the runs of earlier versions going on as the spec's version_policy says. A journey whose
draft was never published is published (shown as the field `unpublished`). A draft someone is editing is
left alone while the file matches the published version. --prune archives (ArchiveJourney: runs still going
end). Pausing and resuming stay operations, not configuration: a paused journey is compared like any other.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from omni.decisioning.v1 import decisioning_pb2 as pb
from omni.decisioning.v1 import decisioning_pb2_grpc as grpc_pb
from omni_kit.commands.connect import Clients, CommandError
from omni_kit.commands.kinds import Kind, list_all

UNPUBLISHED = "unpublished"
"""The pseudo-field a never-published journey differs in: apply publishes its draft."""


class MultiStepJourneys(Kind):
    """Versioned journeys of steps (message, wait, wait for event, condition, split, …)."""

    name = "MultiStepJourney"
    plural = "multi_step_journeys"
    service = "decisioning"
    message = pb.Journey
    spec_fields = (
        "name",
        "entry",
        "entry_rule",
        "steps",
        "exit_criteria",
        "enter_existing_members",
        "version_policy",
    )
    references = {"segment": ("segment_id", "Segment"), "in_segment": ("in_segment_id", "Segment")}

    def spec(self, resource: Message) -> dict[str, Any]:
        assert isinstance(resource, pb.Journey)
        data = json_format.MessageToDict(resource.spec, preserving_proto_field_name=True)
        return {"name": resource.name} | {field: data[field] for field in self.spec_fields if field in data}

    def parse(self, spec: dict[str, Any], where: str) -> Message:
        unknown = sorted(set(spec) - set(self.spec_fields))
        if unknown:
            raise CommandError(
                f"{where}: {self.name} has no field {', '.join(unknown)} (its fields: {', '.join(self.spec_fields)})"
            )
        if not spec.get("name"):
            raise CommandError(f"{where}: {self.name} needs `name`, which names it")
        journey = pb.Journey(name=str(spec["name"]))
        try:
            json_format.ParseDict({k: v for k, v in spec.items() if k != "name"}, journey.spec)
        except json_format.ParseError as error:
            raise CommandError(f"{where}: {error}") from None
        return journey

    def changed_fields(self, live: Message, desired: Message) -> list[str]:
        assert isinstance(live, pb.Journey)
        fields = super().changed_fields(live, desired)
        return [*fields, UNPUBLISHED] if live.version == 0 else fields

    def _stub(self, clients: Clients) -> grpc_pb.DecisioningServiceStub:
        return grpc_pb.DecisioningServiceStub(clients.channel(self.service))

    async def list_live(self, clients: Clients) -> list[Message]:
        stub = self._stub(clients)
        journeys = await list_all(stub.ListJourneys, pb.ListJourneysRequest(), "journeys")
        live: list[Message] = []
        for journey in journeys:
            if journey.template_id or journey.state == pb.JOURNEY_STATE_ARCHIVED:
                continue  # a one-message journey (the Journey kind), or no longer live
            # The latest published version, or the draft of a journey never published.
            live.append((await stub.GetJourney(pb.GetJourneyRequest(journey_id=journey.id))).journey)
        return live

    async def _publish(self, clients: Clients, journey_id: str, request_id: str) -> Message:
        request = pb.PublishJourneyRequest(journey_id=journey_id, request_id=request_id)
        return (await self._stub(clients).PublishJourney(request)).journey

    async def create(self, clients: Clients, desired: Message) -> Message:
        request = pb.CreateJourneyRequest(journey=desired, request_id=self.request_id("create", desired))
        created = (await self._stub(clients).CreateJourney(request)).journey
        return await self._publish(clients, created.id, self.request_id("publish", desired, created))

    async def update(self, clients: Clients, live: Message, desired: Message, mask: list[str]) -> Message:
        assert isinstance(live, pb.Journey) and isinstance(desired, pb.Journey)
        if desired.name != live.name:
            raise CommandError(f"journey {live.name}: a journey's name cannot change")
        if [field for field in mask if field != UNPUBLISHED]:
            request = pb.UpdateJourneyDraftRequest(
                journey_id=live.id, spec=desired.spec, request_id=self.request_id("draft", desired, live)
            )
            await self._stub(clients).UpdateJourneyDraft(request)
        return await self._publish(clients, live.id, self.request_id("publish", desired, live))

    async def archive(self, clients: Clients, live: Message) -> None:
        assert isinstance(live, pb.Journey)
        await self._stub(clients).ArchiveJourney(pb.ArchiveJourneyRequest(journey_id=live.id))


KIND = MultiStepJourneys()
