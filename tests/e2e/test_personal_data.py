"""Where a customer's personal data goes, and that erasure takes it everywhere, over the real five services.

A customer with a distinctive name, email address and phone number is tracked across web and app, given
traits and consent, enters an abandoned-cart segment and is emailed by the journey. Then:

- the services' logs (every record of Omni's loggers, DEBUG included, and the libraries' from INFO), the trace spans (attributes and events) and the event
  payloads on NATS are scanned for the name, email and phone: none in logs or traces; on NATS only in the event
  types whose contract carries them (PERSONAL_EVENT_TYPES);
- the operator erases the person (ForgetPerson), and once every service has applied the erasure no table of
  any of the five databases holds the name, email or phone (as text, or UTF-8 inside binary columns such as
  the outbox's envelopes).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import sqlalchemy as sa
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from omni.common.v1 import common_pb2
from omni.decisioning.v1 import decisioning_pb2
from omni.gateway.v1 import gateway_pb2
from omni.identity.v1 import identity_pb2
from omni.profile.v1 import profile_pb2
from omni.segmentation.v1 import segmentation_pb2
from omni_kit.db import create_engine
from omni_kit.embedded import EmbeddedNats, SmtpSink
from tests.e2e.conftest import Omni, running_omni
from tests.e2e.test_abandoned_cart import abandoned_cart_rule, event, eventually

PERSONAL_EVENT_TYPES = frozenset(
    {
        # A tracked event as it was tracked: its identifiers (email, phone) and properties.
        "profile.event_tracked",
        # What changed on a profile: traits (names, email, phone) among it.
        "profile.profile_changed",
    }
)
"""Event types whose contract carries personal data (omni.profile.v1 events); every other event holds ids."""


async def _collect(nats_server: EmbeddedNats, namespace: str, into: list[tuple[str, bytes]]) -> Any:
    import nats

    client = await nats.connect(nats_server.url)

    async def received(message: Any) -> None:
        into.append((message.subject, message.data))

    await client.subscribe(f"{namespace}.events.>", cb=received)
    await client.subscribe(f"{namespace}.dlq.>", cb=received)
    return client


def _needles(*values: str) -> list[bytes]:
    """What to look for: each value, lower-cased, as UTF-8 and as the hex PostgreSQL shows bytea in."""
    found = []
    for value in values:
        raw = value.lower().encode()
        found += [raw, raw.hex().encode()]
    return found


def _holds(haystack: bytes | str, needles: list[bytes]) -> bool:
    data = haystack.lower().encode() if isinstance(haystack, str) else haystack.lower()
    return any(n in data for n in needles)


async def _tables_holding(url: str, needles: list[bytes]) -> dict[str, int]:
    """Tables (and how many rows of each) whose rows, as text, hold a needle."""
    engine = create_engine(url, application_name="omni-test-personal-data")
    found: dict[str, int] = {}
    try:
        async with engine.connect() as connection:
            tables = (
                await connection.execute(
                    sa.text("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
                )
            ).scalars()
            for table in list(tables):
                rows = (await connection.execute(sa.text(f'SELECT t::text FROM "{table}" t'))).scalars()
                hits = sum(1 for row in rows if _holds(row, needles))
                if hits:
                    found[table] = hits
    finally:
        await engine.dispose()
    return found


@pytest.fixture
async def omni(
    make_database: Callable[..., str], nats_server: EmbeddedNats, smtp_sink: SmtpSink
) -> AsyncIterator[Omni]:
    async with running_omni(make_database, nats_server, smtp_sink) as running:
        yield running


async def test_personal_data_stays_where_it_belongs_and_erasure_takes_it_everywhere(
    omni: Omni,
    nats_server: EmbeddedNats,
    smtp_sink: SmtpSink,
    span_exporter: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    tag = uuid.uuid4().hex[:8]
    first, last = f"Zerlina{tag}", f"Quarrington{tag}"
    email = f"zerlina.{tag}@example.com"
    phone = f"+49151{int(tag, 16) % 10**8:08d}"
    needles = _needles(first, last, email, phone)
    published: list[tuple[str, bytes]] = []
    collector = await _collect(nats_server, omni.namespace, published)
    span_exporter.clear()

    segment = (
        await omni.segmentation.CreateSegment(
            segmentation_pb2.CreateSegmentRequest(
                segment=segmentation_pb2.Segment(name=f"cart-{tag}", condition=abandoned_cart_rule(idle_s=2))
            )
        )
    ).segment
    await omni.gateway.CreateTemplate(
        gateway_pb2.CreateTemplateRequest(
            template=gateway_pb2.Template(
                id=f"cart-{tag}",
                channel=common_pb2.CHANNEL_EMAIL,
                subject="Your cart is waiting",
                body_text="Hello {{ traits.first_name }}, {{ cart.items[0].name }} is waiting.",
            )
        )
    )
    await omni.decisioning.CreateJourney(
        decisioning_pb2.CreateJourneyRequest(
            journey=decisioning_pb2.Journey(
                name=f"cart-{tag}",
                trigger_segment_id=segment.id,
                channels=[common_pb2.CHANNEL_EMAIL],
                template_id=f"cart-{tag}",
            )
        )
    )
    cookie = f"cookie-{uuid.uuid4()}"
    await omni.profile.TrackEvent(
        profile_pb2.TrackEventRequest(
            event=event(
                "cart_item_added",
                common_pb2.CHANNEL_WEB,
                ("anonymous_id", cookie),
                cart_item=common_pb2.CartItem(product_id="sku-7", name="Lamp", quantity=1),
            )
        )
    )
    await omni.profile.TrackEvent(
        profile_pb2.TrackEventRequest(
            event=event(
                "logged_in",
                common_pb2.CHANNEL_APP,
                ("anonymous_id", cookie),
                ("email", email),
                ("phone", phone),
            )
        )
    )
    person = (
        await omni.identity.LookupPerson(
            identity_pb2.LookupPersonRequest(identifier=common_pb2.Identifier(type="email", value=email))
        )
    ).person
    traits = profile_pb2.SetTraitsRequest(person_id=person.id, source="crm")
    traits.traits.update({"first_name": first, "last_name": last, "email": email, "phone": phone})
    await omni.profile.SetTraits(traits)
    await omni.profile.SetConsent(
        profile_pb2.SetConsentRequest(
            person_id=person.id,
            consent=profile_pb2.Consent(
                channel=common_pb2.CHANNEL_EMAIL, state=profile_pb2.CONSENT_STATE_GRANTED, source="app"
            ),
        )
    )
    mail = await smtp_sink.wait_for(lambda m: email in str(m["To"]), timeout=60)
    assert first in mail.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    await asyncio.sleep(1.0)  # what the send set off (receipts, timeline) published too

    # Logs and traces: never.
    logged = [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        # Everything Omni logs, and what libraries log at the level a deployment runs at (a library's DEBUG
        # protocol trace is not on there). aiosmtpd's "mail.log" is left out: here it is the test's SMTP sink,
        # the customer's mail server, logging the mail it receives (the gateway's bounce endpoint only ever
        # receives mail for VERP return paths, which hold tokens).
        if (r.name.startswith("omni") or r.levelno >= logging.INFO)
        and r.name != "mail.log"
        and _holds(r.getMessage() + (r.exc_text or ""), needles)
    ]
    assert not logged, logged
    traced = [
        s.name
        for s in span_exporter.get_finished_spans()
        if _holds(
            repr(dict(s.attributes or {})) + repr([dict(e.attributes or {}) for e in s.events]), needles
        )
    ]
    assert not traced, traced
    # NATS: only the events whose contract carries personal data.
    prefix = f"{omni.namespace}.events."
    carrying = {subject.removeprefix(prefix) for subject, data in published if _holds(data, needles)}
    assert carrying, "the scan finds the customer's data where it is allowed (profile's events)"
    assert carrying <= PERSONAL_EVENT_TYPES, carrying - PERSONAL_EVENT_TYPES
    await collector.close()

    # Erasure: once every service has applied it, no table of any service holds the customer's data. (Before
    # it the scan finds the data where it lives, so an empty answer after it means something.)
    before = {name: await _tables_holding(url, needles) for name, url in omni.databases.items()}
    print(f"personal data before the erasure: {before}")
    assert before["identity"] and before["profile"], before
    await omni.identity.ForgetPerson(
        identity_pb2.ForgetPersonRequest(
            person_id=person.id,
            request_id=f"forget-{tag}",
            requested_by="privacy-desk",
            reason="GDPR art. 17",
        )
    )

    async def nothing_left() -> dict[str, dict[str, int]] | None:
        left = {name: await _tables_holding(url, needles) for name, url in omni.databases.items()}
        left = {name: tables for name, tables in left.items() if tables}
        return None if left else {"": {}}

    try:
        await eventually(nothing_left, "no personal data of the erased person in any database", within_s=30)
    except AssertionError:
        left = {name: await _tables_holding(url, needles) for name, url in omni.databases.items()}
        raise AssertionError(f"after erasure, still held: { {n: t for n, t in left.items() if t} }") from None
