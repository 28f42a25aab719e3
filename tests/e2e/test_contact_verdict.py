"""May we contact this person on this channel for this purpose? Profile answers once; decisioning and the gateway
hold the same answer and act on it alike.

Five customers answer differently (granted, nothing, a grant awaiting double opt-in, granted with receipts
refused, granted then revoked). Both copies of the verdicts end the same as profile announced them; the
welcome journey emails exactly those the gateway also lets marketing out to; a receipt goes to everyone but
the one who refused receipts, and to that one goes nowhere. A merge brings a consent given before login to
the survivor, in both copies.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import pytest
import sqlalchemy as sa
from google.protobuf.duration_pb2 import Duration

from omni.common.v1 import common_pb2
from omni.decisioning.v1 import decisioning_pb2
from omni.events.v1 import envelope_pb2
from omni.gateway.v1 import gateway_pb2
from omni.identity.v1 import identity_pb2
from omni.profile.v1 import events_pb2, profile_pb2
from omni.segmentation.v1 import segmentation_pb2
from omni_kit import contact
from omni_kit.bus import unpack
from omni_kit.db import create_engine
from omni_kit.embedded import EmbeddedNats, SmtpSink
from tests.e2e.conftest import Omni
from tests.e2e.test_abandoned_cart import event, eventually
from tests.events import recording

EMAIL, PUSH = common_pb2.CHANNEL_EMAIL, common_pb2.CHANNEL_PUSH
GRANTED, DENIED, REVOKED = (
    profile_pb2.CONSENT_STATE_GRANTED,
    profile_pb2.CONSENT_STATE_DENIED,
    profile_pb2.CONSENT_STATE_REVOKED,
)
MARKETING, TRANSACTIONAL = profile_pb2.CONSENT_PURPOSE_MARKETING, profile_pb2.CONSENT_PURPOSE_TRANSACTIONAL
PENDING = profile_pb2.DOUBLE_OPT_IN_STATE_PENDING_CONFIRMATION
SENT, FAILED = gateway_pb2.MESSAGE_STATUS_SENT, gateway_pb2.MESSAGE_STATUS_FAILED


@dataclass
class Log:
    """Every envelope published on the namespace."""

    envelopes: list[envelope_pb2.Envelope] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def announced(self) -> dict[str, int]:
        """The highest contact verdict version profile announced per person."""
        found: dict[str, int] = {}
        for envelope in self.envelopes:
            if envelope.type == contact.CONTACT_VERDICT_CHANGED:
                verdicts = unpack(envelope, events_pb2.ContactVerdictChangedEvent)
                found[verdicts.person_id] = max(found.get(verdicts.person_id, 0), verdicts.version)
        return found


@pytest.fixture
async def log(omni: Omni, nats_server: EmbeddedNats) -> AsyncIterator[Log]:
    async with recording(Log(), nats_server.url, omni.namespace) as recorded:
        yield recorded


Copy = dict[str, tuple[int, Any]]


async def _copy(url: str) -> Copy:
    """A service's copy of the verdicts: person → (version, verdicts)."""
    engine = create_engine(url, application_name="omni-test-e2e")
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                sa.text("SELECT person_id, version, verdicts FROM contact_verdicts")
            )
            return {str(person): (version, verdicts) for person, version, verdicts in rows}
    finally:
        await engine.dispose()


async def both_copies_as_announced(omni: Omni, log: Log, persons: list[str]) -> Copy:
    """Wait until decisioning's and the gateway's copies hold what profile last announced about the persons;
    they must then be the same. Returns the gateway's."""

    async def caught_up() -> tuple[Copy, Copy] | None:
        announced = {p: v for p, v in log.announced().items() if p in persons}
        copies = (await _copy(omni.databases["decisioning"]), await _copy(omni.databases["gateway"]))
        held = all(copy.get(p, (0, None))[0] >= v for copy in copies for p, v in announced.items())
        return copies if held else None

    decisioning, gateway = await eventually(caught_up, "both copies of the verdicts catching up with profile")
    assert {p: decisioning.get(p) for p in persons} == {p: gateway.get(p) for p in persons}
    return gateway


async def _set(omni: Omni, person: str, channel: int, state: int, **extra: Any) -> None:
    await omni.profile.SetConsent(
        profile_pb2.SetConsentRequest(
            person_id=person,
            consent=profile_pb2.Consent(channel=channel, state=state, source="e2e", **extra),  # type: ignore[arg-type]
        )
    )


async def _create_templates(omni: Omni) -> None:
    for template_id, subject in (("welcome-email", "Welcome aboard"), ("receipt-email", "Your receipt")):
        await omni.gateway.CreateTemplate(
            gateway_pb2.CreateTemplateRequest(
                template=gateway_pb2.Template(
                    id=template_id, channel=EMAIL, subject=subject, body_text=f"{subject}."
                )
            )
        )


async def _welcome_journey(omni: Omni) -> None:
    segment = (
        await omni.segmentation.CreateSegment(
            segmentation_pb2.CreateSegmentRequest(
                segment=segmentation_pb2.Segment(
                    name="signed-up",
                    condition=segmentation_pb2.Condition(
                        event_count=segmentation_pb2.EventCountCondition(
                            event_type="signed_up",
                            window=Duration(seconds=3600),
                            comparison=segmentation_pb2.COMPARISON_GT,
                            count=0,
                        )
                    ),
                )
            )
        )
    ).segment
    await omni.decisioning.CreateJourney(
        decisioning_pb2.CreateJourneyRequest(
            journey=decisioning_pb2.Journey(
                name="welcome",
                trigger_segment_id=segment.id,
                channels=[PUSH, EMAIL],
                template_id="welcome-email",
            )
        )
    )


async def _send(omni: Omni, person: str, template_id: str, purpose: int) -> gateway_pb2.Message:
    response = await omni.gateway.SendMessage(
        gateway_pb2.SendMessageRequest(
            request_id=f"direct-{uuid.uuid4()}",
            person_id=person,
            channel=EMAIL,
            template_id=template_id,
            purpose=purpose,  # type: ignore[arg-type]
        )
    )
    return response.message


def _to(address: str, subject: str) -> Callable[[EmailMessage], bool]:
    return lambda m: m["To"] == address and m["Subject"] == subject


def _emails(sink: SmtpSink, address: str, subject: str) -> int:
    return sum(1 for m in sink.messages() if m["To"] == address and m["Subject"] == subject)


async def test_one_verdict_reaches_decisioning_and_the_gateway_and_both_act_on_it_alike(
    omni: Omni, log: Log, smtp_sink: SmtpSink
) -> None:
    await _create_templates(omni)
    await _welcome_journey(omni)
    answers: Mapping[str, list[dict[str, Any]]] = {
        "ada": [{"channel": EMAIL, "state": GRANTED}],
        "bob": [],
        "cleo": [{"channel": EMAIL, "state": GRANTED, "double_opt_in": PENDING}],
        "dan": [
            {"channel": EMAIL, "state": GRANTED},
            {"channel": EMAIL, "state": DENIED, "purpose": TRANSACTIONAL},
        ],
        "eve": [{"channel": EMAIL, "state": GRANTED}, {"channel": EMAIL, "state": REVOKED}],
    }
    tag = uuid.uuid4().hex[:8]
    address = {name: f"{name}.{tag}@example.com" for name in answers}
    person: dict[str, str] = {}
    for name in answers:
        seen = event("page_viewed", common_pb2.CHANNEL_WEB, ("email", address[name]))
        person[name] = (await omni.profile.TrackEvent(profile_pb2.TrackEventRequest(event=seen))).person_id
    for name, given in answers.items():
        for answer in given:
            await _set(omni, person[name], **answer)

    copy = await both_copies_as_announced(omni, log, list(person.values()))
    assert person["bob"] not in copy  # never answered: no announcement, no verdicts held, no marketing

    # Everyone signs up: the welcome journey (push, else email) may email only those marketing is allowed to.
    for name in answers:
        signed = event("signed_up", common_pb2.CHANNEL_WEB, ("email", address[name]))
        await omni.profile.TrackEvent(profile_pb2.TrackEventRequest(event=signed))
    engine = create_engine(omni.databases["decisioning"], application_name="omni-test-e2e")
    try:

        async def runs() -> dict[str, str] | None:
            async with engine.connect() as connection:
                rows = await connection.execute(
                    sa.text("SELECT person_id, outcome FROM journey_runs WHERE person_id = ANY(:ids)"),
                    {"ids": [uuid.UUID(p) for p in person.values()]},
                )
                found = {str(p): outcome for p, outcome in rows}
            return found if len(found) == len(person) else None

        outcomes = await eventually(runs, "a welcome journey run for each customer")
    finally:
        await engine.dispose()
    chosen = {name for name in answers if outcomes[person[name]] == "send_requested"}
    assert chosen == {"ada", "dan"}
    for name in chosen:
        await smtp_sink.wait_for(_to(address[name], "Welcome aboard"))

    # The gateway, asked directly, lets marketing out to exactly the customers decisioning chose.
    marketing = {name: await _send(omni, person[name], "welcome-email", MARKETING) for name in answers}
    assert {name for name, m in marketing.items() if m.status == SENT} == chosen
    assert {name: m.error for name, m in marketing.items() if m.status == FAILED} == {
        "bob": "no marketing consent for email",
        "cleo": "no marketing consent for email: awaiting double opt-in confirmation",
        "eve": "no marketing consent for email: revoked",
    }

    # A receipt goes to everyone who did not refuse receipts; to dan, who did, it goes nowhere.
    receipts = {name: await _send(omni, person[name], "receipt-email", TRANSACTIONAL) for name in answers}
    assert {name: m.status for name, m in receipts.items()} == {
        name: FAILED if name == "dan" else SENT for name in answers
    }
    assert receipts["dan"].error == "no transactional consent for email: denied"
    for name in answers:
        if name != "dan":
            await smtp_sink.wait_for(_to(address[name], "Your receipt"))
    await asyncio.sleep(0.5)
    assert _emails(smtp_sink, address["dan"], "Your receipt") == 0
    assert {name: _emails(smtp_sink, address[name], "Welcome aboard") for name in answers} == {
        "ada": 2,
        "bob": 0,
        "cleo": 0,
        "dan": 2,
        "eve": 0,
    }


async def test_a_merge_brings_a_consent_given_before_login_to_the_survivor_in_both_copies(
    omni: Omni, log: Log, smtp_sink: SmtpSink
) -> None:
    await _create_templates(omni)
    cookie, address = f"cookie-{uuid.uuid4()}", f"fay.{uuid.uuid4().hex[:8]}@example.com"
    # The newsletter box on the web shop: a visitor known by a cookie agrees to email.
    visitor = event("page_viewed", common_pb2.CHANNEL_WEB, ("anonymous_id", cookie))
    visitor_id = (await omni.profile.TrackEvent(profile_pb2.TrackEventRequest(event=visitor))).person_id
    await _set(omni, visitor_id, EMAIL, GRANTED)
    # The customer's account, known by email, never answered.
    account = event("signed_up", common_pb2.CHANNEL_APP, ("email", address))
    account_id = (await omni.profile.TrackEvent(profile_pb2.TrackEventRequest(event=account))).person_id
    assert account_id != visitor_id
    # She logs in on the web shop: cookie and email meet, and identity merges the two.
    login = event("logged_in", common_pb2.CHANNEL_WEB, ("anonymous_id", cookie), ("email", address))
    await omni.profile.TrackEvent(profile_pb2.TrackEventRequest(event=login))

    async def merged() -> str | None:
        found = await omni.identity.LookupPerson(
            identity_pb2.LookupPersonRequest(identifier=common_pb2.Identifier(type="email", value=address))
        )
        announced = log.announced()
        survivor = found.person.id
        if visitor_id in found.person.merged_person_ids or account_id in found.person.merged_person_ids:
            # The survivor's verdicts are announced after the merge if the visitor's answer moved to it.
            return survivor if survivor == visitor_id or announced.get(survivor, 0) > 0 else None
        return None

    survivor = await eventually(merged, "identity merging the visitor and the account, profile announcing it")
    copy = await both_copies_as_announced(omni, log, [survivor])
    verdicts = {(v["channel"], v["purpose"], v["allowed"]) for v in copy[survivor][1]}
    assert ("email", "marketing", True) in verdicts

    # Either id reaches her: the gateway asks identity who the person is now.
    for person_id in (visitor_id, account_id):
        sent = await _send(omni, person_id, "welcome-email", MARKETING)
        assert sent.status == SENT, sent.error
    await smtp_sink.wait_for(lambda m: m["To"] == address and m["Subject"] == "Welcome aboard")
