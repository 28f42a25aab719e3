"""The coffee-chain story: a customer orders in the app (user id and loyalty card), then buys a coffee in a
store where only her loyalty card is seen; both purchases are one person's, she enters the "tenth coffee"
segment, and the journey sends her a Web Push that the local push service decrypts, with the subscription's
private key, to "your 10th coffee is free"; at a till connected to the gateway, her card brings the offer."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf.duration_pb2 import Duration

from omni.common.v1 import common_pb2
from omni.decisioning.v1 import decisioning_pb2
from omni.gateway.v1 import gateway_pb2
from omni.identity.v1 import identity_pb2
from omni.profile.v1 import profile_pb2
from omni.segmentation.v1 import segmentation_pb2
from omni_kit.embedded import EmbeddedNats, SmtpSink, free_port
from tests.e2e.conftest import Omni, running_omni
from tests.e2e.test_abandoned_cart import event, eventually
from tests.gateway.push_service import Delivered, PushService, running_push_service
from tests.gateway.tills import KEYS, STORE, STORES, TillClient

OFFER = "tenth-coffee-free"


@pytest.fixture
async def push_service() -> AsyncIterator[PushService]:
    async with running_push_service() as service:
        yield service


@pytest.fixture
async def omni_with_push(
    make_database: Callable[..., str], nats_server: EmbeddedNats, smtp_sink: SmtpSink
) -> AsyncIterator[Omni]:
    """The five services, the gateway delivering push through Web Push (the local push service's http
    subscriptions are accepted on loopback)."""
    vapid = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    webpush = {
        "name": "webpush",
        "kind": "webpush",
        "channel": "push",
        "vapid_private_key": vapid.decode(),
        "vapid_subject": "mailto:push@coffee.example",
        "allow_http_loopback": True,
    }
    # The gateway asks decisioning for the tills' offers, and decisioning starts after it: its port is chosen
    # here.
    decisioning_port = free_port("127.0.0.1")
    settings: dict[str, dict[str, Any]] = {
        "identity": {"web_push_http_loopback": True},
        "gateway": {
            "providers": [webpush],
            "terminal_stores": STORES,
            "decisioning_target": f"127.0.0.1:{decisioning_port}",
        },
        "decisioning": {"grpc_port": decisioning_port},
    }
    async with running_omni(make_database, nats_server, smtp_sink, settings=settings) as running:
        yield running


async def test_app_order_and_store_purchase_make_one_person_who_gets_the_tenth_coffee_push(
    omni_with_push: Omni, push_service: PushService
) -> None:
    omni = omni_with_push
    # The marketer's set-up: two purchases make the segment; its journey sends a push.
    segment = (
        await omni.segmentation.CreateSegment(
            segmentation_pb2.CreateSegmentRequest(
                segment=segmentation_pb2.Segment(
                    name="tenth-coffee",
                    condition=segmentation_pb2.Condition(
                        event_count=segmentation_pb2.EventCountCondition(
                            event_type="order_completed",
                            window=Duration(seconds=int(timedelta(days=30).total_seconds())),
                            comparison=segmentation_pb2.COMPARISON_GTE,
                            count=2,
                        )
                    ),
                )
            )
        )
    ).segment
    await omni.gateway.CreateTemplate(
        gateway_pb2.CreateTemplateRequest(
            template=gateway_pb2.Template(
                id="tenth-coffee-push",
                channel=common_pb2.CHANNEL_PUSH,
                subject="Thanks for coming by",
                body_text="your 10th coffee is free",
            )
        )
    )
    await omni.decisioning.CreateJourney(
        decisioning_pb2.CreateJourneyRequest(
            journey=decisioning_pb2.Journey(
                name="tenth-coffee",
                trigger_segment_id=segment.id,
                channels=[common_pb2.CHANNEL_PUSH],
                template_id="tenth-coffee-push",
            )
        )
    )

    await omni.decisioning.CreateOffer(
        decisioning_pb2.CreateOfferRequest(
            offer=decisioning_pb2.Offer(
                name=OFFER,
                description="Your 10th coffee is free",
                touchpoints=["pos"],
                segment_id=segment.id,
            )
        )
    )

    user = f"user-{uuid.uuid4().hex[:10]}"
    card = f"LC-{uuid.uuid4().hex[:10].upper()}"
    browser = push_service.subscribe()
    # In the app: she is signed in (user id), her loyalty card is in the wallet, and the app's web view
    # registered its push subscription; she orders a coffee.
    await omni.profile.TrackEvent(
        profile_pb2.TrackEventRequest(
            event=event(
                "order_completed",
                common_pb2.CHANNEL_APP,
                ("user_id", user),
                ("loyalty_card", card),
                ("web_push_subscription", browser.to_json()),
            )
        )
    )
    person = (
        await omni.identity.LookupPerson(
            identity_pb2.LookupPersonRequest(identifier=common_pb2.Identifier(type="user_id", value=user))
        )
    ).person
    # She allows push in the app.
    await omni.profile.SetConsent(
        profile_pb2.SetConsentRequest(
            person_id=person.id,
            consent=profile_pb2.Consent(
                channel=common_pb2.CHANNEL_PUSH, state=profile_pb2.CONSENT_STATE_GRANTED, source="app"
            ),
        )
    )
    # In the store, only the loyalty card is scanned at the till.
    await omni.profile.TrackEvent(
        profile_pb2.TrackEventRequest(
            event=event("order_completed", common_pb2.CHANNEL_STORE, ("loyalty_card", card))
        )
    )
    at_till = (
        await omni.identity.LookupPerson(
            identity_pb2.LookupPersonRequest(
                identifier=common_pb2.Identifier(type="loyalty_card", value=card)
            )
        )
    ).person
    assert at_till.id == person.id

    async def pushed() -> Delivered | None:
        found = push_service.delivered_to(browser)
        return found[0] if found else None

    delivered = await eventually(pushed, "the push decrypted by the push service", within_s=60)
    assert delivered.payload["title"] == "Thanks for coming by"
    assert delivered.payload["body"] == "your 10th coffee is free"
    assert len(push_service.delivered_to(browser)) == 1

    # Next visit: the till scans her card and gets the offer meant for the segment she is in.
    till = TillClient(
        omni.gateway,
        gateway_pb2.ConnectTerminalRequest(
            hello=gateway_pb2.TerminalHello(store_id=STORE, terminal_id="till-1", terminal_key=KEYS[STORE])
        ),
    )
    try:
        assert (await till.next()).WhichOneof("frame") == "hello_ok"
        till.identify(gateway_pb2.TERMINAL_IDENTIFIER_TYPE_LOYALTY_CARD, card, request_id="scan")
        customer = (await till.next()).customer
        assert (customer.known, customer.person_id) == (True, person.id)
        assert [a.offer_name for a in customer.actions] == [OFFER]
    finally:
        await till.hang_up()
