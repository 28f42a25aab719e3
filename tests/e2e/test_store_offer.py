"""The in-store offer: a shopper known online is recognised at the till by their loyalty card, and the
point-of-sale touchpoint gets the offer meant for the segment they are in — decided without calling any other
service on the hot path."""

from __future__ import annotations

import uuid

from google.protobuf.struct_pb2 import Struct, Value

from omni.common.v1 import common_pb2
from omni.decisioning.v1 import decisioning_pb2
from omni.identity.v1 import identity_pb2
from omni.profile.v1 import profile_pb2
from omni.segmentation.v1 import segmentation_pb2
from tests.e2e.conftest import Omni
from tests.e2e.test_abandoned_cart import event, eventually


async def test_loyal_shopper_gets_the_vip_offer_at_the_till(omni: Omni) -> None:
    vip = (
        await omni.segmentation.CreateSegment(
            segmentation_pb2.CreateSegmentRequest(
                segment=segmentation_pb2.Segment(
                    name="vip",
                    condition=segmentation_pb2.Condition(
                        trait=segmentation_pb2.TraitCondition(
                            trait="tier",
                            comparison=segmentation_pb2.COMPARISON_EQ,
                            value=Value(string_value="gold"),
                        )
                    ),
                )
            )
        )
    ).segment
    for name, priority, segment_id in (
        ("vip-double-points", 50, vip.id),
        ("everyone-free-bag", 10, ""),
    ):
        await omni.decisioning.CreateOffer(
            decisioning_pb2.CreateOfferRequest(
                offer=decisioning_pb2.Offer(
                    name=name,
                    description=name.replace("-", " "),
                    touchpoints=["pos_checkout"],
                    segment_id=segment_id,
                    priority=priority,
                )
            )
        )

    email = f"grace.{uuid.uuid4().hex[:8]}@example.com"
    card = f"LC-{uuid.uuid4().hex[:10].upper()}"
    # Online, the shopper signs up in the app and links a loyalty card to the account.
    await omni.profile.TrackEvent(
        profile_pb2.TrackEventRequest(
            event=event("signed_up", common_pb2.CHANNEL_APP, ("email", email), ("loyalty_card", card))
        )
    )
    person = (
        await omni.identity.LookupPerson(
            identity_pb2.LookupPersonRequest(identifier=common_pb2.Identifier(type="email", value=email))
        )
    ).person
    traits = Struct()
    traits.update({"tier": "gold", "first_name": "Grace"})
    await omni.profile.SetTraits(
        profile_pb2.SetTraitsRequest(person_id=person.id, traits=traits, source="crm")
    )

    # At the till only the loyalty card is known: the POS looks the person up and asks what to offer.
    at_till = (
        await omni.identity.LookupPerson(
            identity_pb2.LookupPersonRequest(
                identifier=common_pb2.Identifier(type="loyalty_card", value=card)
            )
        )
    ).person
    assert at_till.id == person.id

    async def vip_offer_first() -> decisioning_pb2.DecideResponse | None:
        decision = await omni.decisioning.Decide(
            decisioning_pb2.DecideRequest(
                person_id=at_till.id, touchpoint="pos_checkout", channel=common_pb2.CHANNEL_STORE, limit=2
            )
        )
        names = [a.offer_name for a in decision.actions]
        return decision if names == ["vip-double-points", "everyone-free-bag"] else None

    decision = await eventually(vip_offer_first, "the VIP offer ranked first at the till")
    assert decision.decision_id

    # A shopper outside the segment gets only the offer for everyone.
    stranger = (
        await omni.identity.ResolvePerson(
            identity_pb2.ResolvePersonRequest(
                identifiers=[common_pb2.Identifier(type="loyalty_card", value=f"LC-{uuid.uuid4().hex[:10]}")]
            )
        )
    ).resolution
    other = await omni.decisioning.Decide(
        decisioning_pb2.DecideRequest(
            person_id=stranger.person_id, touchpoint="pos_checkout", channel=common_pb2.CHANNEL_STORE, limit=2
        )
    )
    assert [a.offer_name for a in other.actions] == ["everyone-free-bag"]
