"""The call-centre screen against the real services: found by phone (as the caller says it), email, loyalty
card, user id or person id; identity, traits, consent, segments, journeys, messages and the timeline."""

from __future__ import annotations

import re
import statistics
import uuid
from datetime import UTC, datetime, timedelta

from examples.retailer import Customer
from omni.common.v1 import common_pb2
from omni.identity.v1 import identity_pb2
from omni.profile.v1 import profile_pb2
from omni_console.settings import Settings
from tests.console.conftest import Console, Stack, eventually, open_console


def store_customer(stack: Stack) -> Customer:
    """A customer of the data set who bought both online and in a store."""
    for customer in stack.loaded.customers:
        if customer.loyalty_card is not None and customer.index in _with_both(stack):
            return customer
    raise AssertionError("the data set has no customer who bought online and in a store")


def _with_both(stack: Stack) -> set[int]:
    from examples.retailer import history

    now = datetime.now(UTC)
    both = set()
    for customer in stack.loaded.customers:
        orders = {e.channel for e in history(customer, 11, 3, now) if e.type == "order_completed"}
        if {common_pb2.CHANNEL_WEB, common_pb2.CHANNEL_STORE} <= orders:
            both.add(customer.index)
    return both


async def person_id_of(stack: Stack, email: str) -> str:
    lookup = await stack.omni.identity.LookupPerson(
        identity_pb2.LookupPersonRequest(identifier=common_pb2.Identifier(type="email", value=email))
    )
    return lookup.person.id


async def test_found_by_phone_in_national_format_shows_online_and_store_orders(
    stack: Stack, console: Console
) -> None:
    customer = store_customer(stack)
    found = await console.http.get("/persons", params={"q": customer.phone_national})
    assert found.status_code == 303, found.text
    person_id = await person_id_of(stack, customer.email)
    assert found.headers["location"] == f"/persons/{person_id}"

    async def page() -> str | None:
        answer = await console.http.get(f"/persons/{person_id}")
        assert answer.status_code == 200
        return answer.text if "orders_in_store" in answer.text else None

    html = await eventually(page, "the computed traits on the person's page")
    assert customer.phone_e164 in html and customer.email in html
    assert customer.loyalty_card is not None and customer.loyalty_card in html
    rows = re.findall(
        r"<tr>\s*<td>[^<]*</td>\s*<td><span class=\"channel channel-(\w+)\">.*?</td>\s*<td>(\w+)</td>",
        html,
        re.S,
    )
    orders = {channel for channel, kind in rows if kind == "order_completed"}
    assert {"web", "store"} <= orders, rows
    assert "first_name" in html and customer.given_name in html
    assert "store-shoppers" in html, "the segments the person is in, with since-when"
    assert "store-shopper-thanks" in html, "the journey they are in"


async def test_every_kind_of_identifier_finds_the_person(stack: Stack, console: Console) -> None:
    customer = store_customer(stack)
    person_id = await person_id_of(stack, customer.email)
    assert customer.loyalty_card is not None
    for text, kind in [
        (customer.email.upper(), "auto"),
        (customer.phone_e164, "phone"),
        (customer.loyalty_card, "auto"),
        (customer.loyalty_card, "loyalty_card"),
        (customer.user_id, "user_id"),
        (customer.user_id, "auto"),
        (person_id, "auto"),
    ]:
        found = await console.http.get("/persons", params={"q": text, "kind": kind})
        assert found.status_code == 303, (text, kind, found.text)
        assert found.headers["location"] == f"/persons/{person_id}", (text, kind)


async def test_nobody_and_nonsense_are_said_so(console: Console) -> None:
    nobody = await console.http.get("/persons", params={"q": "nobody@example.com"})
    assert nobody.status_code == 404 and "nobody holds email nobody@example.com" in nobody.text
    bad_phone = await console.http.get("/persons", params={"q": "12", "kind": "phone"})
    assert bad_phone.status_code == 400 and "phone" in bad_phone.text
    unknown = await console.http.get(f"/persons/{uuid.uuid4()}")
    assert unknown.status_code == 404


async def test_messages_show_delivery_and_the_timeline_pages(stack: Stack, console: Console) -> None:
    customer = store_customer(stack)
    person_id = await person_id_of(stack, customer.email)

    async def sent() -> str | None:
        html = (await console.http.get(f"/persons/{person_id}")).text
        return html if "store-thanks-email" in html else None

    html = await eventually(sent, "the journey's email among the messages sent")
    assert "channel-email" in html

    first = await console.http.get(f"/persons/{person_id}/timeline")
    assert first.status_code == 200


async def test_timeline_is_paged(stack: Stack) -> None:
    settings = stack.settings.model_copy(update={"timeline_page_size": 3})
    customer = stack.loaded.customers[0]
    person_id = await person_id_of(stack, customer.email)
    async with open_console(settings) as console:
        html = (await console.http.get(f"/persons/{person_id}")).text
        token = re.search(r'/timeline\?page_token=([^"]+)"', html)
        assert token, "a button for older events"
        older = await console.http.get(f"/persons/{person_id}/timeline?page_token={token.group(1)}")
        assert older.status_code == 200 and older.text.count("<tr>") >= 1


async def test_a_thousand_event_person_loads_within_300_ms(stack: Stack, console: Console) -> None:
    email = f"busy.{uuid.uuid4().hex[:8]}@example.com"
    start = datetime.now(UTC) - timedelta(days=20)
    channels = [common_pb2.CHANNEL_WEB, common_pb2.CHANNEL_APP, common_pb2.CHANNEL_STORE]
    events = []
    for n in range(1000):
        event = profile_pb2.Event(
            id=str(uuid.uuid4()),
            type="product_viewed" if n % 10 else "order_completed",
            channel=channels[n % 3],
            identifiers=[common_pb2.Identifier(type="email", value=email)],
        )
        event.occurred_at.FromDatetime(start + timedelta(minutes=n))
        events.append(event)
    await stack.omni.profile.BatchTrackEvents(profile_pb2.BatchTrackEventsRequest(events=events))
    person_id = await person_id_of(stack, email)

    async def counted() -> bool:
        request = profile_pb2.GetProfileRequest(person_id=person_id)
        return (await stack.omni.profile.GetProfile(request)).profile.event_count == 1000

    await eventually(counted, "the 1,000 events on the profile")
    timings = []
    for _ in range(9):
        answer = await console.http.get(f"/persons/{person_id}")
        assert answer.status_code == 200 and "Older events" in answer.text
        timings.append(float(answer.headers["server-timing"].split("dur=")[1]))
    # The services answer from this very process and event loop (and the machine is shared), so a slow answer
    # may be theirs or a neighbour's: the fastest of nine is the console's own cost with every part fetched.
    assert min(timings) < 300, timings
    print(
        f"person page, 1,000 events: server time min {min(timings):.0f} ms, median {statistics.median(timings):.0f} ms"
    )


async def test_parts_the_console_may_not_read_are_not_shown(stack: Stack) -> None:
    customer = stack.loaded.customers[0]
    person_id = await person_id_of(stack, customer.email)
    settings: Settings = stack.settings.model_copy(update={"scopes": ("identity.persons:read",)})
    async with open_console(settings) as console:
        html = (await console.http.get(f"/persons/{person_id}")).text
    assert customer.email in html, "identity is readable"
    assert "first_name" not in html and customer.given_name not in html, "traits are not"
    assert "do not hold profile.profiles:read" in html
    assert "do not hold segmentation.memberships:read" in html
