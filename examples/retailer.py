"""A small retailer's data set, loaded through Omni's public APIs, so a newcomer sees a living system.

    make run                                  # in one terminal
    .venv/bin/python -m examples.retailer     # in another: loads it into the run, then open the console

Customers of a shop with a web shop, an app and stores: each signs up in the app (email and phone as typed),
browses and buys on the web, logs in and fills a cart in the app, and some buy in a store with their loyalty
card; a few weeks of events, consent answers, segments, an email template and a journey, and a couple of
name-and-address records the matcher sends to review. Event ids, request ids and names are fixed by the
seed, so loading twice changes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp

from omni.common.v1 import common_pb2
from omni.decisioning.v1 import decisioning_pb2, decisioning_pb2_grpc
from omni.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from omni.identity.v1 import matching_pb2, matching_pb2_grpc
from omni.profile.v1 import profile_pb2, profile_pb2_grpc
from omni.segmentation.v1 import segmentation_pb2, segmentation_pb2_grpc

WEB, APP, STORE = common_pb2.CHANNEL_WEB, common_pb2.CHANNEL_APP, common_pb2.CHANNEL_STORE
GIVEN = [
    "Ada",
    "Lin",
    "Sam",
    "Noor",
    "Ravi",
    "Mia",
    "Tom",
    "Zoe",
    "Ivan",
    "Leah",
    "Omar",
    "Kate",
    "Jon",
    "Eva",
]
SURNAMES = ["Lovelace", "Chen", "Okafor", "Haddad", "Patel", "Novak", "Berg", "Silva", "Ito", "Moreau"]
PRODUCTS = [
    ("sku-trail-shoes", "Trail Running Shoes", 8990),
    ("sku-rain-jacket", "Rain Jacket", 12900),
    ("sku-wool-socks", "Wool Socks", 1490),
    ("sku-water-bottle", "Water Bottle", 1990),
    ("sku-head-torch", "Head Torch", 3490),
]
CURRENCY = "EUR"
DAY = 86_400


@dataclass
class Stubs:
    """The services' stubs the loader calls."""

    matching: matching_pb2_grpc.MatchingServiceStub
    profile: profile_pb2_grpc.ProfileServiceStub
    segmentation: segmentation_pb2_grpc.SegmentationServiceStub
    decisioning: decisioning_pb2_grpc.DecisioningServiceStub
    gateway: gateway_pb2_grpc.GatewayServiceStub


@dataclass(frozen=True)
class Customer:
    """One customer of the shop and the identifiers they use."""

    index: int
    given_name: str
    surname: str
    email: str
    phone_national: str
    """As the app's sign-up form took it, e.g. "(202) 555-0142"."""
    user_id: str
    cookie: str
    loyalty_card: str | None

    @property
    def phone_e164(self) -> str:
        """The phone number in E.164 (a US number)."""
        return "+1" + "".join(ch for ch in self.phone_national if ch.isdigit())


@dataclass
class Loaded:
    """What was loaded: the customers, the segments by name, the journey, the open review."""

    customers: list[Customer]
    events: int = 0
    segments: dict[str, str] = field(default_factory=dict)
    journey_id: str = ""
    review_decision_id: str = ""


def customers(count: int, seed: int) -> list[Customer]:
    """The shop's customers, the same for the same seed; every third has no loyalty card."""
    rng = random.Random(seed)
    made = []
    for index in range(count):
        given, surname = rng.choice(GIVEN), rng.choice(SURNAMES)
        line = rng.randrange(10_000, 99_999)
        tag = f"{seed}-{index}"
        made.append(
            Customer(
                index=index,
                given_name=given,
                surname=surname,
                email=f"{given.lower()}.{surname.lower()}.{tag}@example.com",
                phone_national=f"(202) 55{str(line)[0]}-{str(line)[1:]}",
                user_id=f"u-{tag}",
                cookie=f"ck-{tag}",
                loyalty_card=None if index % 3 == 2 else f"LC-{seed:03d}{index:05d}",
            )
        )
    return made


def _stamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _event(
    seed: int,
    serial: str,
    kind: str,
    channel: int,
    moment: datetime,
    identifiers: list[tuple[str, str]],
    **properties: float | str,
) -> profile_pb2.Event:
    message = profile_pb2.Event(
        id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"omni-retailer/{seed}/{serial}")),
        type=kind,
        channel=channel,  # type: ignore[arg-type]
        identifiers=[common_pb2.Identifier(type=t, value=v) for t, v in identifiers],
        occurred_at=_stamp(moment),
    )
    if properties:
        values = Struct()
        values.update(properties)
        message.properties.CopyFrom(values)
    return message


def history(customer: Customer, seed: int, weeks: int, now: datetime) -> list[profile_pb2.Event]:
    """A customer's few weeks across app, web and store, oldest first."""
    rng = random.Random(seed * 1_000_003 + customer.index)
    start = now - timedelta(weeks=weeks)
    email, cookie, user = (
        ("email", customer.email),
        ("anonymous_id", customer.cookie),
        ("user_id", customer.user_id),
    )
    events = [
        _event(
            seed,
            f"{customer.index}/signup",
            "signed_up",
            APP,
            start + timedelta(hours=rng.randrange(1, 48)),
            [email, ("phone", customer.phone_national), user],
        )
    ]
    for n in range(rng.randrange(3, 9)):
        moment = start + timedelta(seconds=rng.randrange(2 * DAY, weeks * 7 * DAY - 3600))
        sku, name, price = rng.choice(PRODUCTS)
        serial = f"{customer.index}/{n}"
        kind = rng.random()
        if kind < 0.35:
            events.append(
                _event(seed, serial + "/view", "product_viewed", WEB, moment, [cookie, email], product_id=sku)
            )
            if rng.random() < 0.6:
                events.append(
                    _event(
                        seed,
                        serial + "/order",
                        "order_completed",
                        WEB,
                        moment + timedelta(minutes=12),
                        [cookie, email],
                        revenue=price / 100,
                        currency=CURRENCY,
                        product_id=sku,
                    )
                )
        elif kind < 0.7:
            events.append(_event(seed, serial + "/login", "logged_in", APP, moment, [user]))
            added = _event(
                seed, serial + "/cart", "cart_item_added", APP, moment + timedelta(minutes=3), [user]
            )
            added.cart_item.CopyFrom(
                common_pb2.CartItem(
                    product_id=sku,
                    name=name,
                    quantity=1,
                    unit_price=common_pb2.Money(amount_minor=price, currency_code=CURRENCY),
                )
            )
            events.append(added)
        elif customer.loyalty_card is not None:
            events.append(
                _event(
                    seed,
                    serial + "/store",
                    "order_completed",
                    STORE,
                    moment,
                    [("loyalty_card", customer.loyalty_card), email],
                    revenue=price / 100,
                    currency=CURRENCY,
                    product_id=sku,
                    store="Berlin Mitte",
                )
            )
        else:
            events.append(_event(seed, serial + "/applogin", "logged_in", APP, moment, [user]))
    return sorted(events, key=lambda e: e.occurred_at.ToDatetime())


def _days(n: int) -> Duration:
    return Duration(seconds=n * DAY)


SEGMENTS: dict[str, tuple[str, segmentation_pb2.Condition]] = {
    "recent-buyers": (
        "Bought anywhere in the last 30 days",
        segmentation_pb2.Condition(
            event_count=segmentation_pb2.EventCountCondition(
                event_type="order_completed",
                window=_days(30),
                comparison=segmentation_pb2.COMPARISON_GTE,
                count=1,
            )
        ),
    ),
    "store-shoppers": (
        "Bought in a store in the last 30 days",
        segmentation_pb2.Condition(
            event_count=segmentation_pb2.EventCountCondition(
                event_type="order_completed",
                window=_days(30),
                comparison=segmentation_pb2.COMPARISON_GTE,
                count=1,
                channels=[STORE],
            )
        ),
    ),
    "app-browsers-never-buy": (
        "Active in the app, no purchase in 30 days",
        segmentation_pb2.Condition(
            all=segmentation_pb2.ConditionList(
                conditions=[
                    segmentation_pb2.Condition(
                        event_count=segmentation_pb2.EventCountCondition(
                            event_type="logged_in",
                            window=_days(30),
                            comparison=segmentation_pb2.COMPARISON_GTE,
                            count=1,
                            channels=[APP],
                        )
                    ),
                    segmentation_pb2.Condition(
                        event_count=segmentation_pb2.EventCountCondition(
                            event_type="order_completed",
                            window=_days(30),
                            comparison=segmentation_pb2.COMPARISON_EQ,
                            count=0,
                        )
                    ),
                ]
            )
        ),
    ),
}
JOURNEY = "store-shopper-thanks"
TEMPLATE = "store-thanks-email"


async def _ignore_existing(call: object) -> None:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.ALREADY_EXISTS:
            raise


async def load(
    stubs: Stubs, *, count: int = 40, weeks: int = 4, seed: int = 7, now: datetime | None = None
) -> Loaded:
    """Load the data set: customers and their events, consent, segments, a template, a journey, reviews."""
    now = now or datetime.now(UTC)
    shop = customers(count, seed)
    loaded = Loaded(shop)

    # The marketer's set-up first, so the segments follow the events as they arrive.
    existing = {
        s.name: s.id
        for s in (
            await stubs.segmentation.ListSegments(segmentation_pb2.ListSegmentsRequest(page_size=500))
        ).segments
    }
    for name, (description, condition) in SEGMENTS.items():
        if name not in existing:
            created = await stubs.segmentation.CreateSegment(
                segmentation_pb2.CreateSegmentRequest(
                    segment=segmentation_pb2.Segment(name=name, description=description, condition=condition),
                    request_id=f"retailer-{seed}-segment-{name}",
                )
            )
            existing[name] = created.segment.id
        loaded.segments[name] = existing[name]
    await _ignore_existing(
        stubs.gateway.CreateTemplate(
            gateway_pb2.CreateTemplateRequest(
                template=gateway_pb2.Template(
                    id=TEMPLATE,
                    channel=common_pb2.CHANNEL_EMAIL,
                    subject="Thank you for visiting our store",
                    body_text="Hello{% if traits.first_name %} {{ traits.first_name }}{% endif %}, thank you for shopping with us.",
                )
            )
        )
    )
    journeys = (
        await stubs.decisioning.ListJourneys(decisioning_pb2.ListJourneysRequest(page_size=1000))
    ).journeys
    journey = next((j for j in journeys if j.name == JOURNEY), None)
    if journey is None:
        journey = (
            await stubs.decisioning.CreateJourney(
                decisioning_pb2.CreateJourneyRequest(
                    journey=decisioning_pb2.Journey(
                        name=JOURNEY,
                        trigger_segment_id=loaded.segments["store-shoppers"],
                        channels=[common_pb2.CHANNEL_EMAIL],
                        template_id=TEMPLATE,
                    ),
                    request_id=f"retailer-{seed}-journey",
                )
            )
        ).journey
    loaded.journey_id = journey.id

    # The customers' weeks, in batches.
    events = [e for customer in shop for e in history(customer, seed, weeks, now)]
    for start in range(0, len(events), 500):
        await stubs.profile.BatchTrackEvents(
            profile_pb2.BatchTrackEventsRequest(events=events[start : start + 500])
        )
    loaded.events = len(events)

    # Names and consent: most agreed to marketing email at sign-up.
    for customer in shop:
        person_id = (
            await stubs.profile.TrackEvent(
                profile_pb2.TrackEventRequest(
                    event=_event(
                        seed,
                        f"{customer.index}/identify",
                        "identified",
                        APP,
                        now - timedelta(minutes=5),
                        [("email", customer.email)],
                    )
                )
            )
        ).person_id
        traits = Struct()
        traits.update({"first_name": customer.given_name, "last_name": customer.surname})
        await stubs.profile.SetTraits(
            profile_pb2.SetTraitsRequest(
                person_id=person_id,
                traits=traits,
                source="app",
                request_id=f"retailer-{seed}-traits-{customer.index}",
            )
        )
        if customer.index % 5 != 4:
            await stubs.profile.SetConsent(
                profile_pb2.SetConsentRequest(
                    person_id=person_id,
                    consent=profile_pb2.Consent(
                        channel=common_pb2.CHANNEL_EMAIL,
                        state=profile_pb2.CONSENT_STATE_GRANTED,
                        purpose=profile_pb2.CONSENT_PURPOSE_MARKETING,
                        source="app-signup",
                    ),
                    request_id=f"retailer-{seed}-consent-{customer.index}",
                )
            )

    loaded.review_decision_id = await _a_review(stubs, seed)
    return loaded


async def _a_review(stubs: Stubs, seed: int) -> str:
    """A store sign-up card and, later, a card with only the name and postcode: the matcher asks for review."""
    full = matching_pb2.PersonRecord(
        given_name="Margaret",
        surname=f"Hamilton{seed}",
        date_of_birth=matching_pb2.CalendarDate(year=1986, month=8, day=17),
        street_number="12",
        address_1="Stanley Street",
        suburb="Richmond",
        postcode="3121",
        state="VIC",
    )
    await stubs.matching.MatchRecord(
        matching_pb2.MatchRecordRequest(
            record=full, source="store-signup", request_id=f"retailer-{seed}-card-1"
        )
    )
    partial = matching_pb2.PersonRecord(given_name="Margaret", surname=f"Hamilton{seed}", postcode="3121")
    result = await stubs.matching.MatchRecord(
        matching_pb2.MatchRecordRequest(
            record=partial, source="store-till", request_id=f"retailer-{seed}-card-2"
        )
    )
    return result.result.decision_id if result.result.decision == matching_pb2.MATCH_DECISION_REVIEW else ""


def connect(host: str) -> tuple[Stubs, list[grpc.aio.Channel]]:
    """Stubs of the services of `omni run` on host (its default ports)."""
    channels = [grpc.aio.insecure_channel(f"{host}:{port}") for port in (15051, 15052, 15053, 15054, 15055)]
    identity, profile, segmentation, decisioning, gateway = channels
    stubs = Stubs(
        matching=matching_pb2_grpc.MatchingServiceStub(identity),
        profile=profile_pb2_grpc.ProfileServiceStub(profile),
        segmentation=segmentation_pb2_grpc.SegmentationServiceStub(segmentation),
        decisioning=decisioning_pb2_grpc.DecisioningServiceStub(decisioning),
        gateway=gateway_pb2_grpc.GatewayServiceStub(gateway),
    )
    return stubs, channels


async def _main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1", help="where `omni run` runs (127.0.0.1)")
    parser.add_argument("--customers", type=int, default=40)
    parser.add_argument("--weeks", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--console", default="http://127.0.0.1:8090", help="the console's URL, to print")
    args = parser.parse_args()
    stubs, channels = connect(args.host)
    try:
        loaded = await load(stubs, count=args.customers, weeks=args.weeks, seed=args.seed)
    finally:
        for open_channel in channels:
            await open_channel.close()
    first = loaded.customers[0]
    print(
        f"loaded {len(loaded.customers)} customers, {loaded.events} events, segments {', '.join(loaded.segments)}"
    )
    print(
        f"open {args.console}/persons?q={first.phone_national.replace(' ', '+')} to see {first.given_name} {first.surname}"
    )


if __name__ == "__main__":
    asyncio.run(_main())
