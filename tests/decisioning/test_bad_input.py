"""Every kind of bad input gets the right status with field violations, and nothing is written."""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from omni.common.v1 import common_pb2 as c
from omni.decisioning.v1 import decisioning_pb2 as d
from omni.gateway.v1 import gateway_pb2
from omni_kit.errors import StatusDetails, status_details

from .support import Decisioning

TABLES = ("journeys", "offers", "decisions", "journey_runs", "outbox")


async def counts(decisioning: Decisioning) -> dict[str, int]:
    return {table: await decisioning.scalar(f"SELECT count(*) FROM {table}") for table in TABLES}


@pytest.fixture
async def unchanged(decisioning: Decisioning) -> AsyncIterator[None]:
    """Fail the test if any row was written during it."""
    before = await counts(decisioning)
    yield
    assert await counts(decisioning) == before


async def failure(call: Awaitable[Any]) -> StatusDetails:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return status_details(raised.value)


def journey(**fields: Any) -> d.CreateJourneyRequest:
    values: dict[str, Any] = {
        "name": f"journey-{uuid.uuid4().hex[:8]}",
        "trigger_segment_id": str(uuid.uuid4()),
        "channels": [c.CHANNEL_EMAIL, c.CHANNEL_SMS],
        "template_id": "abandoned-cart",
    }
    values.update(fields)
    return d.CreateJourneyRequest(journey=d.Journey(**values))


def offer(**fields: Any) -> d.CreateOfferRequest:
    values: dict[str, Any] = {"name": f"offer-{uuid.uuid4().hex[:8]}", "priority": 1, "touchpoints": ["web"]}
    values.update(fields)
    return d.CreateOfferRequest(offer=d.Offer(**values))


def decide(**fields: Any) -> d.DecideRequest:
    values: dict[str, Any] = {"person_id": str(uuid.uuid4()), "touchpoint": "web_home", "limit": 1}
    values.update(fields)
    return d.DecideRequest(**values)


async def invalid(decisioning: Decisioning, call: Awaitable[Any], *fields: str) -> None:
    details = await failure(call)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.fields == set(fields)
    assert details.error_info is not None
    assert details.error_info.domain == "omni.decisioning"


# -- CreateJourney ---------------------------------------------------------------------------------------


@pytest.mark.usefixtures("unchanged")
async def test_journey_missing(decisioning: Decisioning) -> None:
    await invalid(decisioning, decisioning.stub.CreateJourney(d.CreateJourneyRequest()), "journey")


@pytest.mark.usefixtures("unchanged")
async def test_journey_name_missing(decisioning: Decisioning) -> None:
    await invalid(decisioning, decisioning.stub.CreateJourney(journey(name="  ")), "journey.name")


@pytest.mark.usefixtures("unchanged")
async def test_journey_segment_id_missing(decisioning: Decisioning) -> None:
    request = journey(trigger_segment_id="")
    await invalid(decisioning, decisioning.stub.CreateJourney(request), "journey.trigger_segment_id")


@pytest.mark.usefixtures("unchanged")
async def test_journey_segment_id_malformed(decisioning: Decisioning) -> None:
    request = journey(trigger_segment_id="abandoned-cart")
    await invalid(decisioning, decisioning.stub.CreateJourney(request), "journey.trigger_segment_id")


@pytest.mark.usefixtures("unchanged")
async def test_journey_channels_empty(decisioning: Decisioning) -> None:
    await invalid(decisioning, decisioning.stub.CreateJourney(journey(channels=[])), "journey.channels")


@pytest.mark.usefixtures("unchanged")
async def test_journey_channel_unspecified(decisioning: Decisioning) -> None:
    request = journey(channels=[c.CHANNEL_EMAIL, c.CHANNEL_UNSPECIFIED])
    await invalid(decisioning, decisioning.stub.CreateJourney(request), "journey.channels[1]")


@pytest.mark.usefixtures("unchanged")
async def test_journey_channel_unknown(decisioning: Decisioning) -> None:
    request = journey(channels=[99])
    await invalid(decisioning, decisioning.stub.CreateJourney(request), "journey.channels[0]")


@pytest.mark.usefixtures("unchanged")
async def test_journey_channel_duplicate(decisioning: Decisioning) -> None:
    request = journey(channels=[c.CHANNEL_EMAIL, c.CHANNEL_SMS, c.CHANNEL_EMAIL])
    await invalid(decisioning, decisioning.stub.CreateJourney(request), "journey.channels[2]")


@pytest.mark.usefixtures("unchanged")
async def test_journey_template_missing(decisioning: Decisioning) -> None:
    await invalid(decisioning, decisioning.stub.CreateJourney(journey(template_id="")), "journey.template_id")


@pytest.mark.usefixtures("unchanged")
async def test_journey_template_not_a_gateway_template_id(decisioning: Decisioning) -> None:
    request = journey(template_id="Abandoned Cart")
    await invalid(decisioning, decisioning.stub.CreateJourney(request), "journey.template_id")


@pytest.mark.usefixtures("unchanged")
async def test_journey_every_bad_field_is_reported_at_once(decisioning: Decisioning) -> None:
    request = journey(name="", trigger_segment_id="x", channels=[0, 0], template_id="")
    await invalid(
        decisioning,
        decisioning.stub.CreateJourney(request),
        "journey.name",
        "journey.trigger_segment_id",
        "journey.channels[0]",
        "journey.channels[1]",
        "journey.template_id",
    )


async def test_journey_name_taken(decisioning: Decisioning) -> None:
    name = f"welcome-{uuid.uuid4().hex[:8]}"
    existing = {
        "trigger_segment_id": str(await decisioning.segment()),
        "template_id": await decisioning.template(),
    }
    await decisioning.stub.CreateJourney(journey(name=name, **existing))
    before = await counts(decisioning)
    details = await failure(decisioning.stub.CreateJourney(journey(name=name, **existing)))
    assert details.code == grpc.StatusCode.ALREADY_EXISTS
    assert details.error_info is not None
    assert details.error_info.reason == "JOURNEY_EXISTS"
    assert await counts(decisioning) == before


# -- ListJourneys ----------------------------------------------------------------------------------------


async def test_list_page_token_foreign(decisioning: Decisioning) -> None:
    request = d.ListJourneysRequest(page_token="page-2")
    await invalid(decisioning, decisioning.stub.ListJourneys(request), "page_token")


async def test_list_page_size_negative(decisioning: Decisioning) -> None:
    await invalid(
        decisioning, decisioning.stub.ListJourneys(d.ListJourneysRequest(page_size=-1)), "page_size"
    )


# -- CreateOffer -----------------------------------------------------------------------------------------


@pytest.mark.usefixtures("unchanged")
async def test_offer_missing(decisioning: Decisioning) -> None:
    await invalid(decisioning, decisioning.stub.CreateOffer(d.CreateOfferRequest()), "offer")


@pytest.mark.usefixtures("unchanged")
async def test_offer_name_missing(decisioning: Decisioning) -> None:
    await invalid(decisioning, decisioning.stub.CreateOffer(offer(name="")), "offer.name")


@pytest.mark.usefixtures("unchanged")
async def test_offer_segment_id_malformed(decisioning: Decisioning) -> None:
    await invalid(decisioning, decisioning.stub.CreateOffer(offer(segment_id="vip")), "offer.segment_id")


@pytest.mark.usefixtures("unchanged")
async def test_offer_touchpoint_empty_or_duplicate(decisioning: Decisioning) -> None:
    request = offer(touchpoints=["web", "", "web"])
    await invalid(
        decisioning, decisioning.stub.CreateOffer(request), "offer.touchpoints[1]", "offer.touchpoints[2]"
    )


async def test_offer_name_taken(decisioning: Decisioning) -> None:
    name = f"ten-off-{uuid.uuid4().hex[:8]}"
    await decisioning.stub.CreateOffer(offer(name=name))
    before = await counts(decisioning)
    details = await failure(decisioning.stub.CreateOffer(offer(name=name, priority=5)))
    assert details.code == grpc.StatusCode.ALREADY_EXISTS
    assert details.error_info is not None
    assert details.error_info.reason == "OFFER_EXISTS"
    assert await counts(decisioning) == before


# -- Decide ----------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("unchanged")
async def test_decide_person_id_missing(decisioning: Decisioning) -> None:
    await invalid(decisioning, decisioning.stub.Decide(decide(person_id="")), "person_id")


@pytest.mark.usefixtures("unchanged")
async def test_decide_person_id_malformed(decisioning: Decisioning) -> None:
    await invalid(decisioning, decisioning.stub.Decide(decide(person_id="ada@example.com")), "person_id")


@pytest.mark.usefixtures("unchanged")
async def test_decide_touchpoint_missing(decisioning: Decisioning) -> None:
    await invalid(decisioning, decisioning.stub.Decide(decide(touchpoint="")), "touchpoint")


@pytest.mark.usefixtures("unchanged")
async def test_decide_limit_above_twenty(decisioning: Decisioning) -> None:
    await invalid(decisioning, decisioning.stub.Decide(decide(limit=21)), "limit")


@pytest.mark.usefixtures("unchanged")
async def test_decide_limit_negative(decisioning: Decisioning) -> None:
    await invalid(decisioning, decisioning.stub.Decide(decide(limit=-1)), "limit")


@pytest.mark.usefixtures("unchanged")
async def test_decide_channel_unknown(decisioning: Decisioning) -> None:
    await invalid(decisioning, decisioning.stub.Decide(decide(channel=42)), "channel")


# -- Control characters -------------------------------------------------------------------------------------
# PostgreSQL cannot store a NUL (text refuses it, JSONB refuses \u0000): it reached the database and answered
# INTERNAL. Names, touchpoints and context keys hold no control characters; a description and the strings of
# a context may keep tabs and line breaks.


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(value)
    return message


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(
    ("method", "request_", "field"),
    [
        ("CreateJourney", journey(name="welcome\x00"), "journey.name"),
        ("CreateJourney", journey(name="welcome\n"), "journey.name"),
        ("CreateJourney", journey(trigger_segment_id=f"{uuid.uuid4()}\x00"), "journey.trigger_segment_id"),
        ("CreateJourney", journey(template_id="cart\x00"), "journey.template_id"),
        ("CreateJourney", journey(template_id="cart\n"), "journey.template_id"),
        ("CreateOffer", offer(name="ten-off\x00"), "offer.name"),
        ("CreateOffer", offer(description="Ten\x00off"), "offer.description"),
        ("CreateOffer", offer(description="\x1b[1mTen off"), "offer.description"),
        ("CreateOffer", offer(touchpoints=["web", "pos\x00"]), "offer.touchpoints[1]"),
        ("CreateOffer", offer(touchpoints=["web\t"]), "offer.touchpoints[0]"),
        ("CreateOffer", offer(segment_id=f"{uuid.uuid4()}\x00"), "offer.segment_id"),
        ("Decide", decide(person_id=f"{uuid.uuid4()}\x00"), "person_id"),
        ("Decide", decide(touchpoint="web_home\x00"), "touchpoint"),
        ("Decide", decide(touchpoint="web_home\n"), "touchpoint"),
        ("Decide", decide(context=struct({"page": "/cart\x00"})), "context.page"),
        ("Decide", decide(context=struct({"pa\x00ge": "/cart"})), "context"),
        ("Decide", decide(context=struct({"cart": {"skus": ["a", "b\x00"]}})), "context.cart.skus[1]"),
        ("Decide", decide(context=struct({"cart": {"s\x00": 1}})), "context.cart"),
        ("Decide", decide(context=struct({"cart": {"total": math.nan}})), "context.cart.total"),
        ("Decide", decide(context=struct({"distance": [1, -math.inf]})), "context.distance[1]"),
        ("ListJourneys", d.ListJourneysRequest(page_token="\x00"), "page_token"),
    ],
    ids=[
        "journey-name",
        "journey-name-line-break",
        "journey-segment-id",
        "journey-template-id",
        "journey-template-id-line-break",
        "offer-name",
        "offer-description",
        "offer-description-escape",
        "offer-touchpoint",
        "offer-touchpoint-tab",
        "offer-segment-id",
        "decide-person-id",
        "decide-touchpoint",
        "decide-touchpoint-line-break",
        "decide-context-value",
        "decide-context-key",
        "decide-context-list-item",
        "decide-context-nested-key",
        "decide-context-nan",
        "decide-context-infinity",
        "list-page-token",
    ],
)
async def test_control_characters(decisioning: Decisioning, method: str, request_: Any, field: str) -> None:
    await invalid(decisioning, getattr(decisioning.stub, method)(request_), field)


async def test_free_text_keeps_tabs_and_line_breaks(decisioning: Decisioning) -> None:
    created = await decisioning.stub.CreateOffer(offer(description="Ten off\n\tthis week\r\n"))
    assert created.offer.description == "Ten off\n\tthis week\r\n"
    context = struct({"note": "line one\nline\ttwo"})
    decision = await decisioning.stub.Decide(decide(context=context))
    stored = await decisioning.scalar("SELECT context FROM decisions WHERE id = :id", id=decision.decision_id)
    assert stored == {"note": "line one\nline\ttwo"}


# -- Sizes -------------------------------------------------------------------------------------------------
# Decide's context is logged with every decision: a 3 MB context was accepted and written to the decision log.


@pytest.mark.usefixtures("unchanged")
async def test_decide_context_over_8_kib(decisioning: Decisioning) -> None:
    context = struct({"blob": "x" * (3 * 1024 * 1024)})
    await invalid(decisioning, decisioning.stub.Decide(decide(context=context)), "context")
    just_over = struct({"blob": "é" * 4096})  # 8 KiB of UTF-8 plus the key
    await invalid(decisioning, decisioning.stub.Decide(decide(context=just_over)), "context")


async def test_decide_context_of_8_kib_is_taken(decisioning: Decisioning) -> None:
    context = struct({"blob": "x" * 8000})
    assert context.ByteSize() <= 8 * 1024
    response = await decisioning.stub.Decide(decide(context=context))
    assert response.decision_id


@pytest.mark.usefixtures("unchanged")
async def test_an_unknown_channel_listed_twice(decisioning: Decisioning) -> None:
    request = journey(channels=[c.CHANNEL_EMAIL, 42, 42])
    await invalid(
        decisioning, decisioning.stub.CreateJourney(request), "journey.channels[1]", "journey.channels[2]"
    )


# -- References ---------------------------------------------------------------------------------------------
# What a journey or offer names must exist: they were stored pointing at nothing, and a journey whose template
# is for another channel could never send. Segments and templates are asked of segmentation and the gateway.


async def refused(
    decisioning: Decisioning, call: Awaitable[Any], code: grpc.StatusCode, reason: str
) -> dict[str, str]:
    before = await counts(decisioning)
    details = await failure(call)
    assert details.code == code
    assert details.error_info is not None
    assert details.error_info.reason == reason
    assert await counts(decisioning) == before
    return dict(details.error_info.metadata)


async def test_a_journey_on_an_unknown_segment(decisioning: Decisioning) -> None:
    unknown = str(uuid.uuid4())
    request = journey(trigger_segment_id=unknown, template_id=await decisioning.template())
    metadata = await refused(
        decisioning, decisioning.stub.CreateJourney(request), grpc.StatusCode.NOT_FOUND, "SEGMENT_NOT_FOUND"
    )
    assert metadata == {"segment_id": unknown, "field": "journey.trigger_segment_id"}


async def test_a_journey_with_an_unknown_template(decisioning: Decisioning) -> None:
    request = journey(trigger_segment_id=str(await decisioning.segment()), template_id="no-such-template")
    metadata = await refused(
        decisioning, decisioning.stub.CreateJourney(request), grpc.StatusCode.NOT_FOUND, "TEMPLATE_NOT_FOUND"
    )
    assert metadata == {"template_id": "no-such-template", "field": "journey.template_id"}


async def test_an_sms_template_on_an_email_journey(decisioning: Decisioning) -> None:
    template = await decisioning.template(c.CHANNEL_SMS)
    request = journey(
        trigger_segment_id=str(await decisioning.segment()), channels=[c.CHANNEL_EMAIL], template_id=template
    )
    metadata = await refused(
        decisioning,
        decisioning.stub.CreateJourney(request),
        grpc.StatusCode.FAILED_PRECONDITION,
        "TEMPLATE_CHANNEL_MISMATCH",
    )
    assert metadata == {
        "field": "journey.template_id",
        "template_id": template,
        "template_channel": "CHANNEL_SMS",
    }


@pytest.mark.usefixtures("unchanged")
async def test_a_journey_on_channels_no_message_is_sent_on(decisioning: Decisioning) -> None:
    request = journey(
        trigger_segment_id=str(await decisioning.segment()),
        channels=[c.CHANNEL_STORE, c.CHANNEL_WEB],
        template_id=await decisioning.template(),
    )
    await invalid(
        decisioning, decisioning.stub.CreateJourney(request), "journey.channels[0]", "journey.channels[1]"
    )


async def test_an_offer_for_an_unknown_segment(decisioning: Decisioning) -> None:
    unknown = str(uuid.uuid4())
    metadata = await refused(
        decisioning,
        decisioning.stub.CreateOffer(offer(segment_id=unknown)),
        grpc.StatusCode.NOT_FOUND,
        "SEGMENT_NOT_FOUND",
    )
    assert metadata == {"segment_id": unknown, "field": "offer.segment_id"}


async def test_a_journey_and_an_offer_naming_what_exists_are_created(decisioning: Decisioning) -> None:
    segment = str(await decisioning.segment())
    template = await decisioning.template(c.CHANNEL_EMAIL)
    created = await decisioning.stub.CreateJourney(
        journey(trigger_segment_id=segment, channels=[c.CHANNEL_PUSH, c.CHANNEL_EMAIL], template_id=template)
    )
    assert created.journey.template_id == template
    offered = await decisioning.stub.CreateOffer(offer(segment_id=segment))
    assert offered.offer.segment_id == segment


async def test_a_journey_takes_a_template_with_a_variant_for_one_of_its_channels(
    decisioning: Decisioning,
) -> None:
    template_id = f"template-{uuid.uuid4().hex[:12]}"
    await decisioning.gateway.CreateTemplate(
        gateway_pb2.CreateTemplateRequest(
            template=gateway_pb2.Template(
                id=template_id,
                variants=[
                    gateway_pb2.TemplateVariant(sms=gateway_pb2.SmsVariant(text="Your cart waits")),
                    gateway_pb2.TemplateVariant(push=gateway_pb2.PushVariant(title="Your cart waits")),
                ],
            )
        )
    )
    segment = str(await decisioning.segment())

    created = await decisioning.stub.CreateJourney(
        journey(
            trigger_segment_id=segment, channels=[c.CHANNEL_EMAIL, c.CHANNEL_SMS], template_id=template_id
        )
    )
    metadata = await refused(
        decisioning,
        decisioning.stub.CreateJourney(
            journey(trigger_segment_id=segment, channels=[c.CHANNEL_EMAIL], template_id=template_id)
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "TEMPLATE_CHANNEL_MISMATCH",
    )

    assert created.journey.template_id == template_id
    assert metadata == {
        "field": "journey.template_id",
        "template_id": template_id,
        "template_channel": "CHANNEL_SMS, CHANNEL_PUSH, CHANNEL_APP",
    }
