"""Checks of incoming requests, turning valid protobuf input into domain values (part of the transport).

Every check records a field violation with the field's path in the request; all are raised together, so a
caller fixes a request in one round trip. Nothing is written before a request has passed.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from google.protobuf.json_format import MessageToDict

from omni.common.v1 import common_pb2
from omni.decisioning.v1 import decisioning_pb2
from omni_decisioning.entities import DecideQuery, NewJourney, NewOffer
from omni_decisioning.paging import decode_token
from omni_kit.errors import Violations, check_json_text, has_control_characters
from omni_kit.ids import parse_uuid

MAX_NAME = 200
MAX_DESCRIPTION = 2000
MAX_TOUCHPOINT = 100
MAX_TOUCHPOINTS = 100
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
MAX_DECIDE_LIMIT = 20

# The gateway's template ids; a journey naming anything else could never be sent.
TEMPLATE_ID = re.compile(r"[a-z0-9-]{1,64}")

_CHANNELS = frozenset(common_pb2.Channel.values()) - {common_pb2.CHANNEL_UNSPECIFIED}


def _name(violations: Violations, path: str, value: str) -> str:
    if not value.strip():
        violations.add(path, "required")
    elif len(value) > MAX_NAME:
        violations.add(path, f"at most {MAX_NAME} characters")
    elif has_control_characters(value):
        violations.add(path, "holds control characters")
    return value


def _touchpoint_problem(value: str) -> str | None:
    """What is wrong with a touchpoint that is not blank, if anything."""
    if len(value) > MAX_TOUCHPOINT:
        return f"at most {MAX_TOUCHPOINT} characters"
    if has_control_characters(value):
        return "holds control characters"
    return None


def _uuid(violations: Violations, path: str, value: str, *, required: bool) -> uuid.UUID | None:
    if not value:
        if required:
            violations.add(path, "required")
        return None
    parsed = parse_uuid(value)
    violations.check(parsed is not None, path, "must be a UUID")
    return parsed


def create_journey(request: decisioning_pb2.CreateJourneyRequest) -> NewJourney:
    """The journey asked for; InvalidArgument listing every bad field otherwise."""
    violations = Violations()
    if not request.HasField("journey"):
        violations.add("journey", "required")
        violations.raise_if_any()
    journey = request.journey
    name = _name(violations, "journey.name", journey.name)
    segment_id = _uuid(violations, "journey.trigger_segment_id", journey.trigger_segment_id, required=True)
    channels = list(journey.channels)
    violations.check(bool(channels), "journey.channels", "at least one channel is required")
    seen: set[int] = set()
    for index, channel in enumerate(channels):
        path = f"journey.channels[{index}]"
        if channel == common_pb2.CHANNEL_UNSPECIFIED:
            violations.add(path, "must not be CHANNEL_UNSPECIFIED")
        elif channel not in _CHANNELS:
            violations.add(path, f"unknown channel {channel}")
        elif channel in seen:
            violations.add(path, f"duplicate channel {common_pb2.Channel.Name(channel)}")
        seen.add(channel)
    if violations.check(bool(journey.template_id), "journey.template_id", "required"):
        violations.check(
            TEMPLATE_ID.fullmatch(journey.template_id) is not None,
            "journey.template_id",
            "1 to 64 characters of a-z, 0-9 and '-' (a gateway template id)",
        )
    violations.raise_if_any()
    assert segment_id is not None
    return NewJourney(
        name=name, trigger_segment_id=segment_id, channels=tuple(channels), template_id=journey.template_id
    )


def list_journeys(request: decisioning_pb2.ListJourneysRequest) -> tuple[int, uuid.UUID | None]:
    """The page size (0 → 50, above 500 → 500) and the id the page starts after."""
    violations = Violations()
    violations.check(request.page_size >= 0, "page_size", "must not be negative")
    after = None
    if request.page_token:
        after = decode_token(request.page_token)
        violations.check(after is not None, "page_token", "not a token this service issued")
    violations.raise_if_any()
    size = request.page_size or DEFAULT_PAGE_SIZE
    return min(size, MAX_PAGE_SIZE), after


def create_offer(request: decisioning_pb2.CreateOfferRequest) -> NewOffer:
    """The offer asked for; InvalidArgument listing every bad field otherwise."""
    violations = Violations()
    if not request.HasField("offer"):
        violations.add("offer", "required")
        violations.raise_if_any()
    offer = request.offer
    name = _name(violations, "offer.name", offer.name)
    if len(offer.description) > MAX_DESCRIPTION:
        violations.add("offer.description", f"at most {MAX_DESCRIPTION} characters")
    elif has_control_characters(offer.description, free_text=True):
        violations.add("offer.description", "holds control characters (tabs and line breaks are fine)")
    violations.check(
        len(offer.touchpoints) <= MAX_TOUCHPOINTS,
        "offer.touchpoints",
        f"at most {MAX_TOUCHPOINTS} touchpoints",
    )
    seen: set[str] = set()
    for index, touchpoint in enumerate(offer.touchpoints):
        path = f"offer.touchpoints[{index}]"
        if not touchpoint.strip():
            violations.add(path, "must not be empty")
        elif problem := _touchpoint_problem(touchpoint):
            violations.add(path, problem)
        elif touchpoint in seen:
            violations.add(path, f"duplicate touchpoint {touchpoint!r}")
        seen.add(touchpoint)
    segment_id = _uuid(violations, "offer.segment_id", offer.segment_id, required=False)
    violations.raise_if_any()
    return NewOffer(
        name=name,
        description=offer.description,
        touchpoints=tuple(offer.touchpoints),
        segment_id=segment_id,
        priority=offer.priority,
    )


def decide(request: decisioning_pb2.DecideRequest) -> DecideQuery:
    """The decision asked for; InvalidArgument listing every bad field otherwise."""
    violations = Violations()
    person_id = _uuid(violations, "person_id", request.person_id, required=True)
    if not request.touchpoint.strip():
        violations.add("touchpoint", "required")
    elif problem := _touchpoint_problem(request.touchpoint):
        violations.add("touchpoint", problem)
    violations.check(
        request.channel == common_pb2.CHANNEL_UNSPECIFIED or request.channel in _CHANNELS,
        "channel",
        f"unknown channel {request.channel}",
    )
    violations.check(
        0 <= request.limit <= MAX_DECIDE_LIMIT, "limit", f"must be between 0 and {MAX_DECIDE_LIMIT}"
    )
    if request.HasField("context"):
        check_json_text(request.context, "context", violations)
    violations.raise_if_any()
    assert person_id is not None
    context: dict[str, Any] = MessageToDict(request.context) if request.HasField("context") else {}
    return DecideQuery(
        person_id=person_id,
        touchpoint=request.touchpoint,
        channel=request.channel,
        context=context,
        limit=request.limit or 1,
    )
