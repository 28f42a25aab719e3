"""Store terminals over ConnectTerminal, against real identity, decisioning and the gateway's database: a till
identifies a customer and gets the offer and the coupon waiting for them. Store messages are sent with
SendMessage on the store channel (a template with a terminal variant) and their receipts read from what the
gateway recorded: acknowledgements, a reconnect that resends exactly what was not acknowledged, messages
pushed while the customer is at the till (sent through another replica, heard over NATS), expiry, and the
hellos and identifications refused."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from nats.js import JetStreamContext

import omni_decisioning.main as decisioning_main
import omni_gateway.main as gateway_main
from omni.common.v1 import common_pb2
from omni.decisioning.v1 import decisioning_pb2, decisioning_pb2_grpc
from omni.gateway.v1 import gateway_pb2
from omni.identity.v1 import events_pb2 as identity_events
from omni.identity.v1 import identity_pb2
from omni_kit.bus import make_envelope
from omni_kit.db import create_engine
from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres
from omni_kit.ids import new_id

from .conftest import EMAIL_ENDPOINTS_ANYWHERE, _common
from .support import Neighbours, publish, unique
from .tills import OFFER, OTHER_STORE, STORE, STORES, Tills, customer, eventually, store_template, stub_of

LOYALTY_CARD = gateway_pb2.TERMINAL_IDENTIFIER_TYPE_LOYALTY_CARD
PHONE = gateway_pb2.TERMINAL_IDENTIFIER_TYPE_PHONE
EMAIL = gateway_pb2.TERMINAL_IDENTIFIER_TYPE_EMAIL


@pytest.fixture(scope="module")
async def tills(
    postgres: EmbeddedPostgres, nats_server: EmbeddedNats, neighbours: Neighbours
) -> AsyncIterator[Tills]:
    """Decisioning with an offer for the till, and a gateway serving the tills of two stores."""
    async with contextlib.AsyncExitStack() as stack:
        decisioning = await decisioning_main.start(
            decisioning_main.Settings(
                **_common(postgres, nats_server, stack, "gw_decisioning", neighbours.namespace),
                segmentation_target="127.0.0.1:1",
                gateway_target="127.0.0.1:1",
            )
        )
        stack.push_async_callback(decisioning.close)
        decisioning_channel = grpc.aio.insecure_channel(f"127.0.0.1:{decisioning.port}")
        stack.push_async_callback(decisioning_channel.close)
        await decisioning_pb2_grpc.DecisioningServiceStub(decisioning_channel).CreateOffer(
            decisioning_pb2.CreateOfferRequest(
                offer=decisioning_pb2.Offer(
                    name=OFFER, description="Double points today", touchpoints=["pos"]
                )
            )
        )
        yield await _serving_tills(
            postgres, nats_server, neighbours, stack, decisioning_target=f"127.0.0.1:{decisioning.port}"
        )


async def _serving_tills(
    postgres: EmbeddedPostgres,
    nats_server: EmbeddedNats,
    neighbours: Neighbours,
    stack: contextlib.AsyncExitStack,
    **overrides: Any,
) -> Tills:
    """A gateway serving the tills of STORE and OTHER_STORE, and another replica of it (same database and
    NATS, serving no till)."""
    settings = gateway_main.Settings(
        **{
            **_common(postgres, nats_server, stack, "gw_gateway", neighbours.namespace),
            "identity_target": neighbours.identity_target,
            "profile_target": neighbours.profile_target,
            "verdicts_durable": f"contact-verdicts-{uuid.uuid4().hex[:8]}",
            "jobs_poll_interval_s": 0.1,
            **EMAIL_ENDPOINTS_ANYWHERE,
            "terminal_stores": STORES,
            "terminal_expiry_interval_s": 0.2,
            "terminal_hello_timeout_s": 1.0,
            **overrides,
        }
    )
    stub = await _replica(stack, settings)
    database = create_engine(settings.database_url, application_name="omni-test-gateway")
    stack.push_async_callback(database.dispose)
    return Tills(
        stub=stub,
        database=database,
        neighbours=neighbours,
        template_id=await store_template(stub),
        other_replica=await _replica(stack, settings),
        namespace=neighbours.namespace,
        settings=settings,
    )


async def _replica(stack: contextlib.AsyncExitStack, settings: gateway_main.Settings) -> Any:
    """A gateway with these settings (on their database), stopped with the stack; a client of it."""
    gateway = await gateway_main.start(settings)
    stack.push_async_callback(gateway.close)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}")
    stack.push_async_callback(channel.close)
    return stub_of(channel)


def _names(customer: gateway_pb2.TerminalCustomer) -> list[str]:
    return [a.offer_name for a in customer.actions]


async def test_a_loyalty_card_at_the_till_brings_the_offer_and_the_waiting_coupon(tills: Tills) -> None:
    card = unique("LC-")
    person = await customer(tills.neighbours, ("loyalty_card", card))
    coupon = await tills.record(person, "10% off your next coffee: COFFEE10")
    till = tills.connect()
    hello = await tills.hello(till)
    assert hello.resent_count == 0 and not hello.last_acked_message_id

    till.identify(LOYALTY_CARD, card, request_id="scan-1")
    frame = await till.next()
    found = frame.customer
    assert frame.WhichOneof("frame") == "customer"
    assert (found.request_id, found.known, found.person_id) == ("scan-1", True, person)
    assert _names(found) == [OFFER] and found.decision_id and not found.decision_error
    assert [(m.message_id, m.text, m.resent) for m in found.messages] == [
        (coupon, "10% off your next coffee: COFFEE10", False)
    ]

    till.ack(coupon)
    [receipt] = await tills.until_receipts(coupon)
    assert receipt.kind == "delivered" and receipt.provider == "terminal"
    delivered = await tills.stub.GetMessage(gateway_pb2.GetMessageRequest(message_id=coupon))
    assert delivered.message.status == gateway_pb2.MESSAGE_STATUS_DELIVERED
    # Acknowledged: another visit, at another till, shows it no more.
    again = tills.connect()
    await tills.hello(again)
    again.identify(LOYALTY_CARD, card)
    assert not (await again.next()).customer.messages
    await till.hang_up()
    await again.hang_up()


async def test_a_till_that_reconnects_gets_again_what_it_did_not_acknowledge_and_nothing_else(
    tills: Tills,
) -> None:
    card = unique("LC-")
    person = await customer(tills.neighbours, ("loyalty_card", card))
    first = await tills.record(person, "coupon one")
    second = await tills.record(person, "coupon two")
    third = await tills.record(person, "coupon three")
    terminal = unique("till-")
    till = tills.connect(terminal)
    await tills.hello(till)
    till.identify(LOYALTY_CARD, card)
    shown = (await till.next()).customer.messages
    assert [m.message_id for m in shown] == [first, second, third]
    till.ack(first)
    await tills.until_receipts(first)
    await till.hang_up()  # the network breaks before the till acknowledged the others

    # The ack of the third reached nobody: the till names it in its hello.
    back = tills.connect(terminal, acked=(third,))
    hello = await tills.hello(back)
    assert hello.resent_count == 1
    assert hello.last_acked_message_id in (first, third)
    resent = (await back.next()).message
    assert (resent.message_id, resent.text, resent.resent) == (second, "coupon two", True)
    await back.quiet()
    back.ack(second)
    await tills.until_receipts(second)
    await back.hang_up()

    # Everything acknowledged: nothing again, ever; one receipt each.
    last = tills.connect(terminal)
    assert (await tills.hello(last)).resent_count == 0
    await last.quiet()
    await last.hang_up()
    for message_id in (first, second, third):
        assert [r.kind for r in await tills.receipts_of(message_id)] == ["delivered"]


async def test_a_message_for_a_customer_at_the_till_goes_down_at_once(tills: Tills) -> None:
    card = unique("LC-")
    person = await customer(tills.neighbours, ("loyalty_card", card))
    till = tills.connect()
    await tills.hello(till)
    till.identify(LOYALTY_CARD, card)
    assert not (await till.next()).customer.messages
    # Sent through another replica: the gateway holding the stream hears of it over NATS.
    receipt_text = await tills.record(
        person, "Your receipt: 1 flat white, 3.20 EUR", stub=tills.other_replica
    )
    pushed = (await till.next()).message
    assert (pushed.message_id, pushed.person_id, pushed.resent) == (receipt_text, person, False)
    await till.quiet()

    # Once the customer left, nothing more is pushed here; what was not acknowledged waits for the next visit.
    till.send(customer_left=gateway_pb2.CustomerLeft())
    await until_released(tills, receipt_text)
    later = await tills.record(person, "a later coupon")
    await till.quiet()
    other = tills.connect(store=OTHER_STORE)
    await tills.hello(other)
    other.identify(LOYALTY_CARD, card)
    assert [m.message_id for m in (await other.next()).customer.messages] == [receipt_text, later]
    await till.hang_up()
    await other.hang_up()


async def until_released(tills: Tills, message_id: str) -> None:
    async def released() -> bool:
        async with tills.database.connect() as connection:
            terminal = await connection.scalar(
                sa.text("SELECT delivered_terminal_id FROM terminal_messages WHERE message_id = :m"),
                {"m": uuid.UUID(message_id)},
            )
        return terminal is None

    await eventually(released)


async def test_a_message_for_another_store_is_not_shown_here(tills: Tills) -> None:
    card = unique("LC-")
    person = await customer(tills.neighbours, ("loyalty_card", card))
    hamburg_only = await tills.record(person, "Hamburg opening week", store=OTHER_STORE)
    anywhere = await tills.record(person, "Any store")
    till = tills.connect()
    await tills.hello(till)
    till.identify(LOYALTY_CARD, card)
    assert [m.message_id for m in (await till.next()).customer.messages] == [anywhere]
    other = tills.connect(store=OTHER_STORE)
    await tills.hello(other)
    other.identify(LOYALTY_CARD, card)
    assert [m.message_id for m in (await other.next()).customer.messages] == [hamburg_only, anywhere]
    await till.hang_up()
    await other.hang_up()


async def test_a_message_nobody_came_for_expires_with_a_failed_receipt(tills: Tills) -> None:
    card = unique("LC-")
    person = await customer(tills.neighbours, ("loyalty_card", card))
    async with contextlib.AsyncExitStack() as stack:
        # A replica whose store messages wait 0.3 s.
        short = await _replica(stack, tills.settings.model_copy(update={"terminal_message_ttl_s": 0.3}))
        expiring = await tills.record(person, "today only", stub=short)
    [receipt] = await tills.until_receipts(expiring)
    assert (receipt.kind, receipt.detail, receipt.provider_event_id) == (
        "failed",
        "expired",
        f"terminal:expired:{expiring}",
    )
    failed = await tills.stub.GetMessage(gateway_pb2.GetMessageRequest(message_id=expiring))
    assert failed.message.status == gateway_pb2.MESSAGE_STATUS_BOUNCED
    till = tills.connect()
    await tills.hello(till)
    till.identify(LOYALTY_CARD, card)
    assert not (await till.next()).customer.messages
    await till.hang_up()


async def test_a_phone_number_in_the_stores_national_format_finds_the_customer(tills: Tills) -> None:
    number = f"+4930{uuid.uuid4().int % 10**7:07d}"
    email = f"{unique('till-')}@example.com"
    person = await customer(tills.neighbours, ("phone", number), ("email", email))
    till = tills.connect()  # a Berlin store: region DE
    await tills.hello(till)
    till.identify(PHONE, "030 " + number[5:], request_id="typed")
    found = (await till.next()).customer
    assert (found.known, found.person_id) == (True, person)
    till.identify(EMAIL, email.upper())
    assert (await till.next()).customer.person_id == person
    await till.hang_up()


async def test_bad_identifications_are_refused_and_the_stream_goes_on(tills: Tills) -> None:
    till = tills.connect()
    await tills.hello(till)
    till.identify(PHONE, "12", request_id="short")
    refused = (await till.next()).rejected
    assert (refused.request_id, refused.reason) == ("short", "INVALID_ARGUMENT")
    assert [v.field for v in refused.violations] == ["customer_identified.identifier_value"]
    till.identify(gateway_pb2.TERMINAL_IDENTIFIER_TYPE_UNSPECIFIED, "x")
    assert [v.field for v in (await till.next()).rejected.violations] == [
        "customer_identified.identifier_type"
    ]
    till.identify(LOYALTY_CARD, "LC-\x00")
    assert [v.field for v in (await till.next()).rejected.violations] == [
        "customer_identified.identifier_value"
    ]
    till.identify(EMAIL, "not-an-address")
    assert (await till.next()).rejected.violations[0].description == "not an email address"
    till.ack("not-a-uuid")
    assert [v.field for v in (await till.next()).rejected.violations] == ["ack.message_ids[0]"]
    till.send(hello=gateway_pb2.TerminalHello(store_id=STORE, terminal_id="again", terminal_key="x" * 20))
    assert "hello" in [v.field for v in (await till.next()).rejected.violations]
    # Nobody holds this card: known is false, nothing else.
    till.identify(LOYALTY_CARD, unique("LC-"), request_id="stranger")
    stranger = (await till.next()).customer
    assert (stranger.request_id, stranger.known, stranger.person_id) == ("stranger", False, "")
    await till.hang_up()


@pytest.mark.parametrize(
    ("store", "key", "code"),
    [
        (STORE, "berlin-terminal-key-WRONG", grpc.StatusCode.UNAUTHENTICATED),
        (STORE, "hamburg-terminal-key-0002", grpc.StatusCode.UNAUTHENTICATED),  # another store's key
        ("no-such-store", "berlin-terminal-key-0001", grpc.StatusCode.UNAUTHENTICATED),
        ("bad store id", "berlin-terminal-key-0001", grpc.StatusCode.INVALID_ARGUMENT),
        (STORE, "k" * 257, grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_a_bad_hello_ends_the_stream(tills: Tills, store: str, key: str, code: grpc.StatusCode) -> None:
    till = tills.connect(store=store, key=key)
    assert await till.status() == code
    assert till.down.empty()


async def test_a_stream_must_start_with_a_hello(tills: Tills) -> None:
    acking = tills.open(
        gateway_pb2.ConnectTerminalRequest(ack=gateway_pb2.TerminalAck(message_ids=[str(uuid.uuid4())]))
    )
    assert await acking.status() == grpc.StatusCode.INVALID_ARGUMENT
    silent = tills.open()  # says nothing for longer than terminal_hello_timeout_s
    assert await silent.status() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_refused_stream_answers_its_refusal_while_the_till_is_still_sending(tills: Tills) -> None:
    # A till whose frames after a refused hello are still on their way must hear the refusal, not the
    # INTERNAL ("Internal error from Core") a gRPC client reads when the server ends a call it is still
    # writing to. Each case is tried many times: the race is lost only now and then.
    identify = gateway_pb2.ConnectTerminalRequest(
        customer_identified=gateway_pb2.CustomerIdentified(
            identifier_type=LOYALTY_CARD, identifier_value="LC-1", request_id="r"
        )
    )
    wrong_key = gateway_pb2.ConnectTerminalRequest(
        hello=gateway_pb2.TerminalHello(store_id=STORE, terminal_id="t", terminal_key="w" * 20)
    )
    codes: dict[str, list[grpc.StatusCode]] = {}
    for name, first, expected in [
        ("no hello", identify, grpc.StatusCode.INVALID_ARGUMENT),
        ("wrong key", wrong_key, grpc.StatusCode.UNAUTHENTICATED),
    ]:
        for _ in range(60):
            call = tills.stub.ConnectTerminal(iter([first] + [identify] * 20), timeout=10)
            with contextlib.suppress(grpc.aio.AioRpcError):
                async for _frame in call:
                    pass
            codes.setdefault(name, []).append(await call.code())
        assert set(codes[name]) == {expected}, (name, codes[name])


async def test_a_newer_stream_of_the_same_till_ends_the_older(tills: Tills) -> None:
    terminal = unique("till-")
    older = tills.connect(terminal)
    await tills.hello(older)
    newer = tills.connect(terminal)
    await tills.hello(newer)
    assert await older.status() == grpc.StatusCode.ABORTED
    await newer.hang_up()


async def test_a_forgotten_persons_store_messages_are_deleted(tills: Tills, js: JetStreamContext) -> None:
    person = await customer(tills.neighbours)
    await tills.record(person, "a coupon for you, Ada")

    async def count() -> int:
        async with tills.database.connect() as connection:
            found = await connection.scalar(
                sa.text("SELECT count(*) FROM terminal_messages WHERE person_id = :p"),
                {"p": uuid.UUID(person)},
            )
        return int(found or 0)

    assert await count() == 1
    await publish(
        js,
        tills.namespace,
        make_envelope(
            identity_events.PersonForgottenEvent(person_id=person, erasure_id=str(new_id())),
            event_type="identity.person_forgotten",
            producer="identity",
            person_id=person,
        ),
    )
    await eventually(lambda: _none(count))
    # The person's store address ("any store") is not theirs: the erasure suppressed it for nobody else.
    await tills.record(await customer(tills.neighbours), "still sent to others")


async def _none(count: Callable[[], Awaitable[int]]) -> bool:
    return await count() == 0


async def test_without_decisioning_the_till_still_gets_the_customer_and_the_messages_at_once(
    postgres: EmbeddedPostgres, nats_server: EmbeddedNats, neighbours: Neighbours, down_port: int
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        tills = await _serving_tills(
            postgres,
            nats_server,
            neighbours,
            stack,
            decisioning_target=f"127.0.0.1:{down_port}",
            terminal_call_timeout_s=0.3,
        )
        card = unique("LC-")
        person = await customer(neighbours, ("loyalty_card", card))
        coupon = await tills.record(person, "a coupon")
        till = tills.connect()
        await tills.hello(till)
        till.identify(LOYALTY_CARD, card)
        found = (await till.next(within=2.0)).customer
        assert (found.known, found.person_id, found.actions, found.decision_id) == (True, person, [], "")
        assert found.decision_error.startswith("decisioning: ")
        assert [m.message_id for m in found.messages] == [coupon]
        await till.hang_up()


async def test_messages_for_a_person_merged_into_the_customer_reach_the_till(tills: Tills) -> None:
    card, email = unique("LC-"), f"{unique('merged-')}@example.com"
    at_till = await customer(tills.neighbours, ("loyalty_card", card))
    online = await customer(tills.neighbours, ("email", email))
    coupon = await tills.record(online, "for the online shopper")
    # The card and the email seen together: identity merges the two persons.
    merged = await tills.neighbours.identity.ResolvePerson(
        identity_pb2.ResolvePersonRequest(
            identifiers=[
                common_pb2.Identifier(type="loyalty_card", value=card),
                common_pb2.Identifier(type="email", value=email),
            ],
            source="pos",
        )
    )
    survivor = merged.resolution.person_id
    gone = {at_till, online} - {survivor}
    assert len(gone) == 1 and list(merged.resolution.merged_person_ids) == list(gone)

    async def merge_reached_the_gateway() -> bool:
        async with tills.database.connect() as connection:
            leads_to = await connection.scalar(
                sa.text("SELECT survivor_id FROM person_lineage WHERE person_id = :p"),
                {"p": uuid.UUID(next(iter(gone)))},
            )
        return str(leads_to) == survivor

    await eventually(merge_reached_the_gateway)
    till = tills.connect()
    await tills.hello(till)
    till.identify(LOYALTY_CARD, card)
    found = (await till.next()).customer
    assert found.person_id == survivor
    assert [m.message_id for m in found.messages] == [coupon]
    await till.hang_up()
