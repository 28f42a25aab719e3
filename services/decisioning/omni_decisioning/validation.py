"""Checks of incoming requests, turning valid protobuf input into domain values (part of the transport).

Most constraints are declared in decisioning.proto and checked by omni_kit.validation (protovalidate); what a
proto cannot say is checked here: no channel or touchpoint listed twice (named by the repeat's index), a page
token this service issued, and Decide's context (its size and the text and numbers inside it). Every problem
is recorded as a field violation with the field's path in the request and all are raised together, so a
caller fixes a request in one round trip. Nothing is written before a request has passed.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Hashable, Iterable
from datetime import UTC, datetime
from typing import Any, cast

from google.protobuf.json_format import MessageToDict
from google.protobuf.timestamp_pb2 import Timestamp

from omni.common.v1 import common_pb2
from omni.decisioning.v1 import decisioning_pb2
from omni_decisioning.entities import OFFER_FIELDS, DecideQuery, NewJourney, NewOffer
from omni_decisioning.paging import JOURNEYS, OFFERS, decode_token
from omni_kit import validation
from omni_kit.errors import Violations, check_json_text

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
# Decide's context is logged with every decision: a cap keeps one call from writing megabytes.
MAX_CONTEXT_BYTES = 8 * 1024


def _repeats(violations: Violations, path: str, values: Iterable[Hashable], describe: Any = repr) -> None:
    """A violation at each item that repeats an earlier one ("offer.touchpoints[2]")."""
    seen: set[Hashable] = set()
    for index, value in enumerate(values):
        if value in seen:
            violations.add(f"{path}[{index}]", f"listed twice: {describe(value)}")
        seen.add(value)


def _channel_name(channel: int) -> str:
    try:
        return common_pb2.Channel.Name(common_pb2.Channel.ValueType(channel))
    except ValueError:  # a number no Channel has (refused by the proto's rules as well)
        return str(channel)


def create_journey(request: decisioning_pb2.CreateJourneyRequest) -> NewJourney:
    """The journey asked for; InvalidArgument listing every bad field otherwise."""
    violations = validation.check(request)
    journey = request.journey
    # Optional in the proto for a multi-step journey (spec), required for a one-message journey.
    if request.HasField("journey"):
        violations.check(bool(journey.trigger_segment_id), "journey.trigger_segment_id", "value is required")
        violations.check(
            len(journey.channels) > 0, "journey.channels", "value must contain at least 1 item(s)"
        )
        violations.check(bool(journey.template_id), "journey.template_id", "value is required")
    _repeats(violations, "journey.channels", journey.channels, _channel_name)
    violations.raise_if_any()
    return NewJourney(
        name=journey.name,
        trigger_segment_id=uuid.UUID(journey.trigger_segment_id),
        channels=tuple(journey.channels),
        template_id=journey.template_id,
    )


def list_journeys(request: decisioning_pb2.ListJourneysRequest) -> tuple[int, uuid.UUID | None]:
    """The page size (0 → 50, above 500 → 500) and the id the page starts after."""
    violations = validation.check(request)
    after = None
    if request.page_token:
        after = decode_token(request.page_token, JOURNEYS)
        violations.check(after is not None, "page_token", "not a token this service issued")
    violations.raise_if_any()
    size = request.page_size or DEFAULT_PAGE_SIZE
    return min(size, MAX_PAGE_SIZE), after


def create_offer(request: decisioning_pb2.CreateOfferRequest) -> NewOffer:
    """The offer asked for; InvalidArgument listing every bad field otherwise."""
    violations = validation.check(request)
    new = _offer_values(request.offer, violations, OFFER_FIELDS)
    violations.raise_if_any()
    return new


def update_offer(request: decisioning_pb2.UpdateOfferRequest) -> tuple[uuid.UUID, NewOffer, set[str]]:
    """The offer's id, the new values and the fields to change; InvalidArgument listing every bad field
    (of those the update mask names) otherwise."""
    paths, violations = validation.check_update(request, "offer", request.update_mask, OFFER_FIELDS)
    violations.check(bool(request.offer.id), "offer.id", "required: the id of the offer to update")
    if request.offer.id and not violations.names("offer.id"):
        violations.check(_is_uuid(request.offer.id), "offer.id", "must be a UUID")
    new = _offer_values(request.offer, violations, paths)
    violations.raise_if_any()
    return uuid.UUID(request.offer.id), new, paths


def list_offers(request: decisioning_pb2.ListOffersRequest) -> tuple[int, uuid.UUID | None]:
    """The page size (0 → 50, above 500 → 500) and the id the page starts after."""
    violations = validation.check(request)
    after = None
    if request.page_token:
        after = decode_token(request.page_token, OFFERS)
        violations.check(after is not None, "page_token", "not a token this service issued")
    violations.raise_if_any()
    size = request.page_size or DEFAULT_PAGE_SIZE
    return min(size, MAX_PAGE_SIZE), after


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _instant(offer: decisioning_pb2.Offer, name: str, violations: Violations) -> datetime | None:
    """A timestamp field as a datetime (None when unset or already refused by the proto's rules)."""
    if not offer.HasField(name) or violations.names(f"offer.{name}"):
        return None
    try:
        return cast(Timestamp, getattr(offer, name)).ToDatetime(tzinfo=UTC)
    except ValueError as error:  # nanos out of range
        violations.add(f"offer.{name}", str(error))
        return None


def _offer_values(offer: decisioning_pb2.Offer, violations: Violations, paths: Collection[str]) -> NewOffer:
    """The values of an offer's fields (those in paths are checked beyond the proto: touchpoints listed
    once, a validity window that is not empty)."""
    if "touchpoints" in paths:
        _repeats(violations, "offer.touchpoints", offer.touchpoints)
    valid_from = _instant(offer, "valid_from", violations)
    valid_until = _instant(offer, "valid_until", violations)
    if "valid_until" in paths and "valid_from" in paths and valid_from and valid_until:
        violations.check(valid_until > valid_from, "offer.valid_until", "must be after valid_from")
    segment_id = None
    if offer.segment_id and _is_uuid(offer.segment_id):
        segment_id = uuid.UUID(offer.segment_id)
    return NewOffer(
        name=offer.name,
        description=offer.description,
        touchpoints=tuple(offer.touchpoints),
        segment_id=segment_id,
        priority=offer.priority,
        group=offer.group,
        valid_from=valid_from,
        valid_until=valid_until,
    )


def decide(request: decisioning_pb2.DecideRequest) -> DecideQuery:
    """The decision asked for; InvalidArgument listing every bad field otherwise."""
    violations = validation.check(request)
    if request.HasField("context"):
        size = request.context.ByteSize()
        if size > MAX_CONTEXT_BYTES:
            violations.add("context", f"at most {MAX_CONTEXT_BYTES} bytes encoded, not {size}")
        else:
            check_json_text(request.context, "context", violations)
    violations.raise_if_any()
    context: dict[str, Any] = MessageToDict(request.context) if request.HasField("context") else {}
    return DecideQuery(
        person_id=uuid.UUID(request.person_id),
        touchpoint=request.touchpoint,
        channel=request.channel,
        context=context,
        limit=request.limit or 1,
        explain=request.explain,
    )
