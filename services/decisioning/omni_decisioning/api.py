"""The gRPC servicer of omni.decisioning.v1.DecisioningService: protobuf in and out, one transaction per call."""

from __future__ import annotations

import uuid
from datetime import datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import trace

from omni.common.v1 import common_pb2
from omni.decisioning.v1 import decisioning_pb2, decisioning_pb2_grpc
from omni_decisioning import validation
from omni_decisioning.decide import Decider
from omni_decisioning.entities import Action, Journey, Offer
from omni_decisioning.evaluation.evaluate import Evaluator
from omni_decisioning.journeys import Journeys
from omni_decisioning.learning.api import LearningServicer
from omni_decisioning.learning.outcomes import Learning
from omni_decisioning.offers import Offers
from omni_decisioning.orchestration.api import JOURNEY_STATES, JourneyFlows, JourneyFlowsApi
from omni_decisioning.paging import OFFERS, encode_token
from omni_decisioning.references import References
from omni_kit import validation as omni_validation
from omni_kit.idempotency import idempotent
from omni_kit.runtime import Runtime


def _timestamp(value: datetime) -> Timestamp:
    timestamp = Timestamp()
    timestamp.FromDatetime(value)
    return timestamp


def journey_to_proto(journey: Journey) -> decisioning_pb2.Journey:
    """The wire form of a journey (a multi-step one without its spec: GetJourney shows that)."""
    return decisioning_pb2.Journey(
        id=str(journey.id),
        name=journey.name,
        trigger_segment_id=str(journey.trigger_segment_id) if journey.trigger_segment_id else "",
        channels=[common_pb2.Channel.ValueType(channel) for channel in journey.channels],
        template_id=journey.template_id,
        create_time=_timestamp(journey.create_time),
        version=journey.version if journey.multi_step else 1,
        state=JOURNEY_STATES[journey.state],
        update_time=_timestamp(journey.update_time or journey.create_time),
        has_draft=journey.has_draft,
    )


def offer_to_proto(offer: Offer) -> decisioning_pb2.Offer:
    """The wire form of an offer."""
    message = decisioning_pb2.Offer(
        id=str(offer.id),
        name=offer.name,
        description=offer.description,
        touchpoints=list(offer.touchpoints),
        segment_id=str(offer.segment_id) if offer.segment_id is not None else "",
        priority=offer.priority,
        create_time=_timestamp(offer.create_time),
        group=offer.group,
        version=offer.version,
        update_time=_timestamp(offer.update_time or offer.create_time),
    )
    if offer.valid_from is not None:
        message.valid_from.CopyFrom(_timestamp(offer.valid_from))
    if offer.valid_until is not None:
        message.valid_until.CopyFrom(_timestamp(offer.valid_until))
    if offer.archive_time is not None:
        message.archive_time.CopyFrom(_timestamp(offer.archive_time))
    return message


def _action(action: Action) -> decisioning_pb2.Action:
    """The wire form of a chosen action, with learned arbitration's P, C, V and L when it made the choice."""
    propensity, context_weight, value, lever = action.factors or (0.0, 0.0, 0.0, 0.0)
    return decisioning_pb2.Action(
        offer_id=str(action.offer.id),
        offer_name=action.offer.name,
        description=action.offer.description,
        score=action.score,
        propensity=propensity,
        context_weight=context_weight,
        value=value,
        lever=lever,
        selection_probability=action.probability,
    )


class DecisioningServicer(LearningServicer, JourneyFlowsApi, decisioning_pb2_grpc.DecisioningServiceServicer):
    """Validates requests, runs the domain in a transaction and translates the result (learning and off-policy
    evaluation: learning/api.py; multi-step journeys: orchestration/api.py)."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        journeys: Journeys,
        offers: Offers,
        decider: Decider,
        references: References,
        learning: Learning,
        evaluator: Evaluator,
        flows: JourneyFlows,
    ) -> None:
        self._runtime = runtime
        self._learning = learning
        self._evaluator = evaluator
        self._flows = flows
        self._references = references
        self._journeys = journeys
        self._offers = offers
        self._decider = decider

    async def CreateJourney(
        self, request: decisioning_pb2.CreateJourneyRequest, context: grpc.aio.ServicerContext
    ) -> decisioning_pb2.CreateJourneyResponse:
        """Define a journey started when a person enters a segment, once per request id; or, with a spec, the
        draft of a multi-step journey."""
        if request.journey.HasField("spec"):
            return await self.create_multi_step_journey(request)
        new = validation.create_journey(request)
        assert new.trigger_segment_id is not None
        await self._references.check_journey(new.trigger_segment_id, new.template_id, new.channels)
        async with self._runtime.transaction() as session:

            async def create() -> decisioning_pb2.CreateJourneyResponse:
                journey = await self._journeys.create(session, new)
                return decisioning_pb2.CreateJourneyResponse(journey=journey_to_proto(journey))

            return await idempotent(
                session,
                "CreateJourney",
                request.request_id,
                request,
                decisioning_pb2.CreateJourneyResponse,
                create,
            )

    async def ListJourneys(
        self, request: decisioning_pb2.ListJourneysRequest, context: grpc.aio.ServicerContext
    ) -> decisioning_pb2.ListJourneysResponse:
        """Page through the journeys in creation order."""
        size, after = validation.list_journeys(request)
        async with self._runtime.transaction() as session:
            journeys, more = await self._journeys.page(session, after=after, size=size)
        return decisioning_pb2.ListJourneysResponse(
            journeys=[journey_to_proto(journey) for journey in journeys],
            next_page_token=encode_token(journeys[-1].id) if more and journeys else "",
        )

    async def CreateOffer(
        self, request: decisioning_pb2.CreateOfferRequest, context: grpc.aio.ServicerContext
    ) -> decisioning_pb2.CreateOfferResponse:
        """Define an offer that Decide may return, once per request id."""
        new = validation.create_offer(request)
        if new.segment_id is not None:
            await self._references.check_segment(new.segment_id, "offer.segment_id")
        async with self._runtime.transaction() as session:

            async def create() -> decisioning_pb2.CreateOfferResponse:
                offer = await self._offers.create(session, new)
                return decisioning_pb2.CreateOfferResponse(offer=offer_to_proto(offer))

            return await idempotent(
                session,
                "CreateOffer",
                request.request_id,
                request,
                decisioning_pb2.CreateOfferResponse,
                create,
            )

    async def GetOffer(
        self, request: decisioning_pb2.GetOfferRequest, context: grpc.aio.ServicerContext
    ) -> decisioning_pb2.GetOfferResponse:
        """Return an offer as it is now, or at one of its versions."""
        omni_validation.validate(request)
        async with self._runtime.transaction() as session:
            offer = await self._offers.get(session, uuid.UUID(request.offer_id), request.version)
        return decisioning_pb2.GetOfferResponse(offer=offer_to_proto(offer))

    async def ListOffers(
        self, request: decisioning_pb2.ListOffersRequest, context: grpc.aio.ServicerContext
    ) -> decisioning_pb2.ListOffersResponse:
        """Page through the offers in creation order."""
        size, after = validation.list_offers(request)
        async with self._runtime.transaction() as session:
            offers, more = await self._offers.page(
                session, after=after, size=size, show_archived=request.show_archived
            )
        return decisioning_pb2.ListOffersResponse(
            offers=[offer_to_proto(offer) for offer in offers],
            next_page_token=encode_token(offers[-1].id, OFFERS) if more and offers else "",
        )

    async def UpdateOffer(
        self, request: decisioning_pb2.UpdateOfferRequest, context: grpc.aio.ServicerContext
    ) -> decisioning_pb2.UpdateOfferResponse:
        """Make the next version of an offer with the fields the mask names, once per request id."""
        offer_id, values, paths = validation.update_offer(request)
        if "segment_id" in paths and values.segment_id is not None:
            await self._references.check_segment(values.segment_id, "offer.segment_id")
        async with self._runtime.transaction() as session:

            async def update() -> decisioning_pb2.UpdateOfferResponse:
                offer = await self._offers.update(
                    session, offer_id, values, paths, expected_version=request.expected_version
                )
                return decisioning_pb2.UpdateOfferResponse(offer=offer_to_proto(offer))

            return await idempotent(
                session,
                "UpdateOffer",
                request.request_id,
                request,
                decisioning_pb2.UpdateOfferResponse,
                update,
            )

    async def ArchiveOffer(
        self, request: decisioning_pb2.ArchiveOfferRequest, context: grpc.aio.ServicerContext
    ) -> decisioning_pb2.ArchiveOfferResponse:
        """Archive an offer, once per request id: Decide no longer returns it."""
        omni_validation.validate(request)
        async with self._runtime.transaction() as session:

            async def archive() -> decisioning_pb2.ArchiveOfferResponse:
                offer = await self._offers.archive(session, uuid.UUID(request.offer_id))
                return decisioning_pb2.ArchiveOfferResponse(offer=offer_to_proto(offer))

            return await idempotent(
                session,
                "ArchiveOffer",
                request.request_id,
                request,
                decisioning_pb2.ArchiveOfferResponse,
                archive,
            )

    async def Decide(
        self, request: decisioning_pb2.DecideRequest, context: grpc.aio.ServicerContext
    ) -> decisioning_pb2.DecideResponse:
        """Return the eligible offers for a person at a touchpoint, best first."""
        query = validation.decide(request)
        decision = await self._decider.decide(query)
        span = trace.get_current_span()
        span.set_attribute("omni.person_id", str(decision.person_id))
        span.set_attribute("omni.decision_id", str(decision.id))
        span.set_attribute("omni.decision.action_count", len(decision.actions))
        return decisioning_pb2.DecideResponse(
            decision_id=str(decision.id),
            actions=[_action(action) for action in decision.actions],
            explanations=[
                decisioning_pb2.Explanation(
                    offer_id=str(item.offer.id),
                    offer_name=item.offer.name,
                    verdict=decisioning_pb2.Explanation.Verdict.ValueType(item.verdict),
                    score=item.score,
                    rank=item.rank,
                    detail=item.detail,
                )
                for item in decision.explanations
            ],
        )
