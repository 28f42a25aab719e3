"""Offers (decisioning): named by `name`; updated with UpdateOffer, pruned with ArchiveOffer."""

from __future__ import annotations

from google.protobuf import field_mask_pb2
from google.protobuf.message import Message

from omni.decisioning.v1 import decisioning_pb2 as pb
from omni.decisioning.v1 import decisioning_pb2_grpc as grpc_pb
from omni_kit.commands.connect import Clients
from omni_kit.commands.kinds import Kind, list_all


class Offers(Kind):
    """Offers and messages decisioning ranks."""

    name = "Offer"
    plural = "offers"
    service = "decisioning"
    references = {"segment": ("segment_id", "Segment")}
    message = pb.Offer
    spec_fields = (
        "name",
        "description",
        "touchpoints",
        "segment_id",
        "priority",
        "group",
        "valid_from",
        "valid_until",
    )

    def _stub(self, clients: Clients) -> grpc_pb.DecisioningServiceStub:
        return grpc_pb.DecisioningServiceStub(clients.channel(self.service))

    async def list_live(self, clients: Clients) -> list[Message]:
        return await list_all(self._stub(clients).ListOffers, pb.ListOffersRequest(), "offers")

    async def create(self, clients: Clients, desired: Message) -> Message:
        request = pb.CreateOfferRequest(offer=desired, request_id=self.request_id("create", desired))
        return (await self._stub(clients).CreateOffer(request)).offer

    async def update(self, clients: Clients, live: Message, desired: Message, mask: list[str]) -> Message:
        assert isinstance(live, pb.Offer) and isinstance(desired, pb.Offer)
        offer = pb.Offer()
        offer.CopyFrom(desired)
        offer.id = live.id
        request = pb.UpdateOfferRequest(
            offer=offer,
            update_mask=field_mask_pb2.FieldMask(paths=mask),
            expected_version=live.version,
            request_id=self.request_id("update", desired, live),
        )
        return (await self._stub(clients).UpdateOffer(request)).offer

    async def archive(self, clients: Clients, live: Message) -> None:
        assert isinstance(live, pb.Offer)
        await self._stub(clients).ArchiveOffer(pb.ArchiveOfferRequest(offer_id=live.id))


KIND = Offers()
