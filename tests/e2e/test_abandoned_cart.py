"""The abandoned-cart story across web, app and email, through all five services.

A visitor browses the web shop (cookie id), adds a product to the cart in the app (device id), then logs in to
the app with an email address. The three identifiers become one person whose profile shows the three events and
the cart. The cart is abandoned; the person enters the "abandoned-cart" segment; the journey sends an email that
arrives addressed to them and names the product; the send appears on their timeline; one trace runs from a
tracked event to the email.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

from google.protobuf.duration_pb2 import Duration
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from omni.common.v1 import common_pb2
from omni.decisioning.v1 import decisioning_pb2
from omni.gateway.v1 import gateway_pb2
from omni.identity.v1 import identity_pb2
from omni.profile.v1 import profile_pb2
from omni.segmentation.v1 import segmentation_pb2
from omni_kit.embedded import SmtpSink
from tests.e2e.conftest import Omni

T = TypeVar("T")

PRODUCT = "Trail Running Shoes"


async def eventually(probe: Callable[[], Awaitable[T | None]], what: str, within_s: float = 30.0) -> T:
    """Poll probe until it returns something, or fail saying what did not happen."""
    deadline = time.monotonic() + within_s
    while True:
        result = await probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.1)


def abandoned_cart_rule(idle_s: int) -> segmentation_pb2.Condition:
    """Cart not empty, no purchase in the last hour, and no cart activity for idle_s seconds."""
    return segmentation_pb2.Condition(
        all=segmentation_pb2.ConditionList(
            conditions=[
                segmentation_pb2.Condition(
                    cart=segmentation_pb2.CartCondition(
                        comparison=segmentation_pb2.COMPARISON_GT, item_count=0
                    )
                ),
                segmentation_pb2.Condition(
                    event_count=segmentation_pb2.EventCountCondition(
                        event_type="order_completed",
                        window=Duration(seconds=3600),
                        comparison=segmentation_pb2.COMPARISON_EQ,
                        count=0,
                    )
                ),
                segmentation_pb2.Condition(
                    since_last_event=segmentation_pb2.SinceLastEventCondition(
                        event_type="cart_item_added", at_least=Duration(seconds=idle_s)
                    )
                ),
            ]
        )
    )


def event(kind: str, channel: int, *identifiers: tuple[str, str], **extra: object) -> profile_pb2.Event:
    """A tracked event with a fresh id."""
    message = profile_pb2.Event(
        id=str(uuid.uuid4()),
        type=kind,
        channel=channel,  # type: ignore[arg-type]
        identifiers=[common_pb2.Identifier(type=t, value=v) for t, v in identifiers],
    )
    for name, value in extra.items():
        getattr(message, name).CopyFrom(value)
    return message


async def test_abandoned_cart_across_web_app_and_email(
    omni: Omni, smtp_sink: SmtpSink, span_exporter: InMemorySpanExporter
) -> None:
    # The marketer's set-up: the segment, the email template and the journey joining them.
    segment = (
        await omni.segmentation.CreateSegment(
            segmentation_pb2.CreateSegmentRequest(
                segment=segmentation_pb2.Segment(
                    name="abandoned-cart", condition=abandoned_cart_rule(idle_s=3)
                )
            )
        )
    ).segment
    await omni.gateway.CreateTemplate(
        gateway_pb2.CreateTemplateRequest(
            template=gateway_pb2.Template(
                id="abandoned-cart-email",
                channel=common_pb2.CHANNEL_EMAIL,
                subject="You left {{ cart.items[0].name }} in your cart",
                body_text=(
                    "Hello{% if traits.first_name %} {{ traits.first_name }}{% endif %},\n"
                    "{% for item in cart.items %}- {{ item.quantity }} x {{ item.name }}\n{% endfor %}"
                    "They are waiting for you."
                ),
            )
        )
    )
    await omni.decisioning.CreateJourney(
        decisioning_pb2.CreateJourneyRequest(
            journey=decisioning_pb2.Journey(
                name="abandoned-cart-reminder",
                trigger_segment_id=segment.id,
                channels=[common_pb2.CHANNEL_PUSH, common_pb2.CHANNEL_EMAIL],
                template_id="abandoned-cart-email",
            )
        )
    )

    cookie = f"cookie-{uuid.uuid4()}"
    device = f"device-{uuid.uuid4()}"
    email = f"ada.{uuid.uuid4().hex[:8]}@example.com"
    span_exporter.clear()

    # 1. Browsing the web shop, known only by a cookie.
    await omni.profile.TrackEvent(
        profile_pb2.TrackEventRequest(
            event=event("product_viewed", common_pb2.CHANNEL_WEB, ("anonymous_id", cookie))
        )
    )
    # 2. Adding the product to the cart in the app, known only by the device.
    await omni.profile.TrackEvent(
        profile_pb2.TrackEventRequest(
            event=event(
                "cart_item_added",
                common_pb2.CHANNEL_APP,
                ("device_id", device),
                cart_item=common_pb2.CartItem(
                    product_id="sku-42",
                    name=PRODUCT,
                    quantity=1,
                    unit_price=common_pb2.Money(amount_minor=12900, currency_code="EUR"),
                ),
            )
        )
    )
    # 3. Logging in to the app with an email address. The app was opened from the web shop, whose cookie id
    #    travels with the login, so web, app and email meet in one event.
    await omni.profile.TrackEvent(
        profile_pb2.TrackEventRequest(
            event=event(
                "logged_in",
                common_pb2.CHANNEL_APP,
                ("device_id", device),
                ("email", f"  {email.upper()} "),
                ("anonymous_id", cookie),
            )
        )
    )

    # The three identifiers are one person.
    person = (
        await omni.identity.LookupPerson(
            identity_pb2.LookupPersonRequest(identifier=common_pb2.Identifier(type="email", value=email))
        )
    ).person
    for kind, value in (("anonymous_id", cookie), ("device_id", device)):
        found = await omni.identity.LookupPerson(
            identity_pb2.LookupPersonRequest(identifier=common_pb2.Identifier(type=kind, value=value))
        )
        assert found.person.id == person.id
    assert {(i.type, i.value) for i in person.identifiers} >= {
        ("anonymous_id", cookie),
        ("device_id", device),
        ("email", email),
    }
    # The customer agrees to email (the app's sign-in screen), but not to push.
    await omni.profile.SetConsent(
        profile_pb2.SetConsentRequest(
            person_id=person.id,
            consent=profile_pb2.Consent(
                channel=common_pb2.CHANNEL_EMAIL, state=profile_pb2.CONSENT_STATE_GRANTED, source="app_login"
            ),
        )
    )

    # The profile shows all three events and the cart put together in the app.
    async def merged_profile() -> profile_pb2.Profile | None:
        found = (await omni.profile.GetProfile(profile_pb2.GetProfileRequest(person_id=person.id))).profile
        kinds = {e.type for e in found.recent_events}
        has_all = {"product_viewed", "cart_item_added", "logged_in"} <= kinds
        return found if has_all and len(found.cart.items) == 1 else None

    profile = await eventually(merged_profile, "one profile with the web, app and login events and the cart")
    assert {e.channel for e in profile.recent_events} >= {common_pb2.CHANNEL_WEB, common_pb2.CHANNEL_APP}
    assert profile.cart.items[0].product_id == "sku-42"

    # The cart is abandoned: the person enters the segment and the journey emails them.
    async def in_segment() -> bool:
        memberships = (
            await omni.segmentation.ListPersonSegments(
                segmentation_pb2.ListPersonSegmentsRequest(person_id=person.id)
            )
        ).memberships
        return any(m.segment_id == segment.id for m in memberships)

    await eventually(in_segment, "the person entering the abandoned-cart segment")
    mail = await smtp_sink.wait_for(lambda m: email in str(m["To"]), timeout=30)
    assert PRODUCT in str(mail["Subject"])
    body = mail.get_body(preferencelist=("plain",))
    assert body is not None and f"1 x {PRODUCT}" in body.get_content()

    # The send is on the person's timeline.
    async def sent_on_timeline() -> profile_pb2.Event | None:
        timeline = await omni.profile.ListTimeline(
            profile_pb2.ListTimelineRequest(person_id=person.id, page_size=50)
        )
        return next((e for e in timeline.events if e.type == "message_sent"), None)

    sent = await eventually(sent_on_timeline, "message_sent on the timeline")
    assert sent.channel == common_pb2.CHANNEL_EMAIL

    # Exactly one email for this person, even with every consumer free to redeliver.
    await asyncio.sleep(0.5)
    assert sum(1 for m in smtp_sink.messages() if email in str(m["To"])) == 1

    # One trace runs from a tracked event, through segmentation, decisioning and the gateway, to the email.
    spans = span_exporter.get_finished_spans()
    smtp = [s for s in spans if s.name == "smtp send"]
    assert smtp, "the email send was traced"
    trace_id = smtp[0].context.trace_id
    names = [s.name for s in spans if s.context.trace_id == trace_id]
    assert any(n.endswith("ProfileService/TrackEvent") for n in names), names
    assert any(n.startswith("segmentation-") for n in names), names
    assert any(n.startswith("decisioning-") and "person_entered_segment" in n for n in names), names
    assert any(n.startswith("gateway-") and "send_requested" in n for n in names), names
