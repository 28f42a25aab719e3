"""Abandoned carts as a multi-step journey, keyed per cart, through all five services and real providers.

A shopper abandons two carts. Each cart starts its own run of the journey: an email at once, then a wait for the
order of that cart, and an SMS if it does not come. She orders the first cart: its run ends at once, while the
second cart's run goes on — through a restart of decisioning in the middle of its wait — and sends its SMS,
once. Counted where the messages arrive: the SMTP sink and the SMS vendor's server.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Callable
from email.message import EmailMessage
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from google.protobuf.duration_pb2 import Duration

from omni.common.v1 import common_pb2 as c
from omni.decisioning.v1 import decisioning_pb2 as d
from omni.decisioning.v1 import decisioning_pb2_grpc
from omni.gateway.v1 import gateway_pb2
from omni.identity.v1 import identity_pb2
from omni.profile.v1 import profile_pb2 as p
from omni_decisioning import main as decisioning_main
from omni_kit.embedded import EmbeddedNats, SmtpSink
from tests.e2e.conftest import Omni, running_omni
from tests.e2e.test_abandoned_cart import eventually
from tests.gateway.sms_vendor import SmsVendor

WAIT_S = 6


@pytest.fixture
async def sms_vendor() -> AsyncIterator[SmsVendor]:
    server = await SmsVendor().start()
    yield server
    await server.stop()


@pytest.fixture
async def omni_with_sms(
    make_database: Callable[..., str], nats_server: EmbeddedNats, smtp_sink: SmtpSink, sms_vendor: SmsVendor
) -> AsyncIterator[Omni]:
    """The five services, the gateway sending SMS through the vendor's HTTP API."""
    provider = {
        "name": "vendor",
        "kind": "http-sms",
        "channel": "sms",
        "base_url": sms_vendor.url,
        "account_sid": sms_vendor.account_sid,
        "auth_token": sms_vendor.auth_token,
        "from_number": "+15005550006",
    }
    async with running_omni(
        make_database, nats_server, smtp_sink, settings={"gateway": {"providers": [provider]}}
    ) as omni:
        yield omni


def _event(kind: str, person_id: str, **properties: Any) -> p.Event:
    values = struct_pb2.Struct()
    values.update(properties)
    return p.Event(
        id=str(uuid.uuid4()), type=kind, channel=c.CHANNEL_WEB, person_id=person_id, properties=values
    )


async def _restart_decisioning(
    omni: Omni, nats_server: EmbeddedNats
) -> decisioning_pb2_grpc.DecisioningServiceStub:
    """Close decisioning and start it again on its database; a stub of the new one."""
    old = omni.runtimes["decisioning"]
    settings: decisioning_main.Settings = old.settings  # type: ignore[assignment]
    await old.close()
    await omni.channels["decisioning"].close()
    new = await decisioning_main.start(settings)
    omni.runtimes["decisioning"] = new
    omni.channels["decisioning"] = grpc.aio.insecure_channel(f"127.0.0.1:{new.port}")
    return decisioning_pb2_grpc.DecisioningServiceStub(omni.channels["decisioning"])


async def test_abandoned_carts_each_get_their_run_and_an_order_ends_only_its_own_across_a_restart(
    omni_with_sms: Omni, smtp_sink: SmtpSink, sms_vendor: SmsVendor, nats_server: EmbeddedNats
) -> None:
    omni = omni_with_sms
    # The marketer: an email and an SMS template, and the journey, published.
    await omni.gateway.CreateTemplate(
        gateway_pb2.CreateTemplateRequest(
            template=gateway_pb2.Template(
                id="cart-email",
                variants=[
                    gateway_pb2.TemplateVariant(
                        email=gateway_pb2.EmailVariant(
                            subject="Your cart {{ variables.key }} is waiting",
                            text="Come back for cart {{ variables.key }}.",
                        )
                    )
                ],
            )
        )
    )
    await omni.gateway.CreateTemplate(
        gateway_pb2.CreateTemplateRequest(
            template=gateway_pb2.Template(
                id="cart-sms",
                variants=[
                    gateway_pb2.TemplateVariant(
                        sms=gateway_pb2.SmsVariant(text="Cart {{ variables.key }} still waits")
                    )
                ],
            )
        )
    )
    spec = d.JourneySpec(
        entry=d.JourneyEntry(event=d.EventEntryTrigger(event_type="cart_abandoned")),
        entry_rule=d.EntryRule(frequency=d.EntryRule.FREQUENCY_EVERY_TIME, key_property="cart_id"),
        steps=[
            d.JourneyStep(
                id="email",
                message=d.MessageStep(
                    channels=[c.CHANNEL_EMAIL], template_id="cart-email", next="wait-order"
                ),
            ),
            d.JourneyStep(
                id="wait-order",
                wait_for_event=d.WaitForEventStep(
                    event_type="order_completed",
                    match_key=True,
                    timeout=Duration(seconds=WAIT_S),
                    on_timeout="sms",
                ),
            ),
            d.JourneyStep(
                id="sms", message=d.MessageStep(channels=[c.CHANNEL_SMS], template_id="cart-sms", next="mark")
            ),
            # Profile learns she was reminded (SetTraits, as the journey).
            d.JourneyStep(
                id="mark",
                update_profile=d.UpdateProfileStep(
                    trait="cart_reminded", value=struct_pb2.Value(bool_value=True)
                ),
            ),
        ],
        exit_criteria=[d.ExitCriterion(event_type="order_completed", match_key=True)],
    )
    created = await omni.decisioning.CreateJourney(
        d.CreateJourneyRequest(journey=d.Journey(name="abandoned carts", spec=spec))
    )
    await omni.decisioning.PublishJourney(d.PublishJourneyRequest(journey_id=created.journey.id))

    # The shopper, with an email address and a phone, consenting to both.
    email = f"cara.{uuid.uuid4().hex[:8]}@example.com"
    phone = f"+49151{random.randint(10**7, 10**8 - 1)}"
    person = (
        await omni.identity.ResolvePerson(
            identity_pb2.ResolvePersonRequest(
                identifiers=[
                    c.Identifier(type="email", value=email),
                    c.Identifier(type="phone", value=phone),
                ],
                source="web",
            )
        )
    ).resolution.person_id
    for channel in (c.CHANNEL_EMAIL, c.CHANNEL_SMS):
        await omni.profile.SetConsent(
            p.SetConsentRequest(
                person_id=person,
                consent=p.Consent(channel=channel, state=p.CONSENT_STATE_GRANTED, source="checkout"),
            )
        )
    await asyncio.sleep(1.0)  # the verdicts reach decisioning and the gateway

    # Two carts abandoned: two runs, two emails.
    for cart in ("A", "B"):
        await omni.profile.TrackEvent(
            p.TrackEventRequest(event=_event("cart_abandoned", person, cart_id=cart))
        )

    def both_emails(message: EmailMessage) -> bool:
        subjects = {str(m["Subject"]) for m in smtp_sink.messages() if email in str(m["To"])}
        return {"Your cart A is waiting", "Your cart B is waiting"} <= subjects

    await smtp_sink.wait_for(both_emails, timeout=30)

    # Cart A is ordered: its run ends at once.
    await omni.profile.TrackEvent(p.TrackEventRequest(event=_event("order_completed", person, cart_id="A")))

    async def run_of(stub: decisioning_pb2_grpc.DecisioningServiceStub, key: str) -> d.JourneyRun | None:
        found = await stub.ListPersonJourneyRuns(d.ListPersonJourneyRunsRequest(person_id=person))
        return next((r for r in found.runs if r.key == key), None)

    async def exited_a() -> d.JourneyRun | None:
        run = await run_of(omni.decisioning, "A")
        return run if run is not None and run.state == d.JourneyRun.RUN_STATE_EXITED else None

    run_a = await eventually(exited_a, "cart A's run ending on its order", within_s=WAIT_S - 1)
    assert run_a.end_reason == "exit criterion order_completed"

    # Decisioning restarts while cart B's run waits.
    stub = await _restart_decisioning(omni, nats_server)

    async def completed_b() -> d.JourneyRun | None:
        run = await run_of(stub, "B")
        return run if run is not None and run.state == d.JourneyRun.RUN_STATE_COMPLETED else None

    run_b = await eventually(completed_b, "cart B's run sending its SMS", within_s=30)
    assert [(s.step_id, s.outcome) for s in run_b.steps] == [
        ("email", "sent"),
        ("wait-order", "waiting"),
        ("wait-order", "timeout"),
        ("sms", "sent"),
        ("mark", "set"),
    ]
    profile = (await omni.profile.GetProfile(p.GetProfileRequest(person_id=person))).profile
    assert profile.traits["cart_reminded"] is True

    async def sms_arrived() -> list[Any]:
        return [m for m in sms_vendor.messages if m.to == phone]

    [sms] = await eventually(sms_arrived, "the SMS for cart B at the vendor")
    assert "Cart B" in sms.body
    await asyncio.sleep(2.0)  # anything sent twice would have arrived by now
    assert [m.body for m in sms_vendor.messages if m.to == phone] == [sms.body]
    mails = [m for m in smtp_sink.messages() if email in str(m["To"])]
    assert sorted(str(m["Subject"]) for m in mails) == ["Your cart A is waiting", "Your cart B is waiting"]
