"""The email link endpoint over real HTTP, with the real profile: one-click unsubscribe (RFC 8058) revoking
marketing email consent, the confirmation page that never unsubscribes, forged and expired tokens, opens and
clicks reported once each with machine ones flagged, and a redirect that goes only where the token says."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web

from omni.common.v1 import common_pb2
from omni.profile.v1 import profile_pb2
from omni_gateway.domain import Purpose
from omni_gateway.email_links import EmailLinks, LinkKind
from omni_gateway.http import PIXEL, SMS_PREFIX, EmailLinkEndpoint
from omni_gateway.providers.base import ReceiptKind

from .email_support import Receipts, email_links
from .support import Neighbours, create_person, unique

BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0"
ONE_CLICK = {"List-Unsubscribe": "One-Click"}


@dataclass
class Clock:
    now: float

    def __call__(self) -> float:
        return self.now


@dataclass
class Endpoint:
    url: str
    links: EmailLinks
    receipts: Receipts
    clock: Clock
    http: aiohttp.ClientSession


@pytest.fixture
async def endpoint(neighbours: Neighbours) -> AsyncIterator[Endpoint]:
    clock = Clock(time.time())
    receipts = Receipts()
    server = EmailLinkEndpoint(
        links=email_links(clock=clock),
        profile=neighbours.profile,
        receipts=receipts,
        host="127.0.0.1",
        port=0,
        shutdown_grace_s=1.0,
        clock=clock,
    )
    await server.start()
    url = f"http://127.0.0.1:{server.port}"
    # The same secret, with the endpoint's local address as the public URL the links are built with.
    links = email_links(url, clock=clock)
    async with aiohttp.ClientSession(headers={"User-Agent": BROWSER}) as http:
        try:
            yield Endpoint(url, links, receipts, clock, http)
        finally:
            await server.stop()


async def _marketing_email_consent(neighbours: Neighbours, person_id: str) -> int:
    profile = (
        await neighbours.profile.GetProfile(profile_pb2.GetProfileRequest(person_id=person_id))
    ).profile
    states = [
        c.state
        for c in profile.consents
        if c.channel == common_pb2.CHANNEL_EMAIL
        and c.purpose in (profile_pb2.CONSENT_PURPOSE_MARKETING, profile_pb2.CONSENT_PURPOSE_UNSPECIFIED)
    ]
    assert len(states) == 1
    return states[0]


async def _person(neighbours: Neighbours) -> uuid.UUID:
    person = await create_person(neighbours, f"{unique('ada-')}@example.com", consent=True)
    assert await _marketing_email_consent(neighbours, person) == profile_pb2.CONSENT_STATE_GRANTED
    return uuid.UUID(person)


def _url_of(endpoint: Endpoint, person: uuid.UUID, *, message_id: uuid.UUID | None = None) -> str:
    claims = endpoint.links.claims(message_id or uuid.uuid4(), person, Purpose.MARKETING)
    return endpoint.links.unsubscribe_url(claims)


async def test_one_click_post_revokes_marketing_email_consent_in_profile(
    endpoint: Endpoint, neighbours: Neighbours
) -> None:
    person = await _person(neighbours)
    message_id = uuid.uuid4()
    url = _url_of(endpoint, person, message_id=message_id)

    # As a mail provider sends it (RFC 8058): a form-encoded POST, no cookies, redirects not followed.
    async with endpoint.http.post(url, data=ONE_CLICK, allow_redirects=False) as response:
        assert response.status == 200
        assert "Location" not in response.headers
        assert "no longer receive" in await response.text()

    assert await _marketing_email_consent(neighbours, str(person)) == profile_pb2.CONSENT_STATE_REVOKED
    [receipt] = endpoint.receipts.of(message_id)
    assert (
        receipt.kind is ReceiptKind.UNSUBSCRIBED and receipt.provider_event_id == f"unsubscribe:{message_id}"
    )

    # Multipart, as some providers post it, and again: still revoked, the same event id (deduplicated).
    form = aiohttp.FormData(ONE_CLICK)
    form.add_field("x", b"", filename="x")  # forces multipart/form-data
    async with endpoint.http.post(url, data=form) as response:
        assert response.status == 200
    assert len(endpoint.receipts.distinct(message_id)) == 1


async def test_get_shows_a_page_whose_form_posts_and_never_unsubscribes(
    endpoint: Endpoint, neighbours: Neighbours
) -> None:
    person = await _person(neighbours)
    url = _url_of(endpoint, person)
    for _ in range(2):
        async with endpoint.http.get(url) as response:
            assert response.status == 200
            page = await response.text()
        async with endpoint.http.head(url) as response:
            assert response.status == 200
    assert '<form method="post">' in page and 'name="List-Unsubscribe" value="One-Click"' in page
    assert await _marketing_email_consent(neighbours, str(person)) == profile_pb2.CONSENT_STATE_GRANTED
    assert endpoint.receipts.received == []

    # A POST without the one-click body (a form of another site, a bare POST) changes nothing either.
    async with endpoint.http.post(url, data={"List-Unsubscribe": "yes"}) as response:
        assert response.status == 400
    assert await _marketing_email_consent(neighbours, str(person)) == profile_pb2.CONSENT_STATE_GRANTED


@pytest.mark.parametrize(
    ("spoil", "status"),
    [
        (lambda token: token[:-2] + ("AA" if not token.endswith("AA") else "BB"), 400),  # signature broken
        (lambda token: "x" + token, 400),  # payload changed
        (lambda token: token.rpartition(".")[0], 400),  # signature missing
    ],
)
async def test_forged_unsubscribe_tokens_are_refused_and_change_nothing(
    endpoint: Endpoint, neighbours: Neighbours, spoil: Callable[[str], str], status: int
) -> None:
    person = await _person(neighbours)
    base, _, token = _url_of(endpoint, person).rpartition("/")
    async with endpoint.http.post(f"{base}/{spoil(token)}", data=ONE_CLICK) as response:
        assert response.status == status
        assert "not valid" in await response.text()
    # An open or click token is no unsubscribe token (each kind is signed with its own salt).
    claims = endpoint.links.claims(uuid.uuid4(), person, Purpose.MARKETING)
    async with endpoint.http.post(
        f"{base}/{endpoint.links.issue(LinkKind.OPEN, claims)}", data=ONE_CLICK
    ) as response:
        assert response.status == 400
    assert await _marketing_email_consent(neighbours, str(person)) == profile_pb2.CONSENT_STATE_GRANTED
    assert endpoint.receipts.received == []


async def test_an_expired_unsubscribe_token_answers_410_and_changes_nothing(
    endpoint: Endpoint, neighbours: Neighbours
) -> None:
    person = await _person(neighbours)
    url = _url_of(endpoint, person)
    endpoint.clock.now += endpoint.links.ttl_s + 1
    async with endpoint.http.post(url, data=ONE_CLICK) as response:
        assert response.status == 410
        assert "expired" in await response.text()
    async with endpoint.http.get(url) as response:
        assert response.status == 410
    assert await _marketing_email_consent(neighbours, str(person)) == profile_pb2.CONSENT_STATE_GRANTED


async def test_an_open_is_reported_once_and_a_fetch_right_after_sending_is_a_machine_open(
    endpoint: Endpoint,
) -> None:
    message_id = uuid.uuid4()
    url = endpoint.links.open_url(endpoint.links.claims(message_id, uuid.uuid4(), Purpose.MARKETING))

    # An image proxy fetching as the email arrives.
    async with endpoint.http.get(url) as response:
        assert response.status == 200 and response.content_type == "image/gif"
        assert await response.read() == PIXEL
        assert "no-store" in response.headers["Cache-Control"]
    endpoint.clock.now += 3600
    for _ in range(3):  # the person opening it an hour later, three times
        async with endpoint.http.get(url) as response:
            assert await response.read() == PIXEL

    kept = endpoint.receipts.distinct(message_id)
    assert {(r.kind, r.machine) for r in kept.values()} == {
        (ReceiptKind.OPENED, True),
        (ReceiptKind.OPENED, False),
    }
    assert len(endpoint.receipts.of(message_id)) == 4  # reported every time, kept once each

    # A known proxy's user agent is a machine whenever it comes.
    proxy_message = uuid.uuid4()
    proxied = endpoint.links.open_url(endpoint.links.claims(proxy_message, uuid.uuid4(), Purpose.MARKETING))
    endpoint.clock.now += 3600
    headers = {
        "User-Agent": "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
    }
    async with endpoint.http.get(proxied, headers=headers) as response:
        assert response.status == 200
    [receipt] = endpoint.receipts.of(proxy_message)
    assert receipt.machine


async def test_a_forged_pixel_answers_the_gif_and_reports_nothing(endpoint: Endpoint) -> None:
    async with endpoint.http.get(f"{endpoint.url}/o/forged.token.gif") as response:
        assert response.status == 200 and await response.read() == PIXEL
    assert endpoint.receipts.received == []


async def test_a_click_is_reported_once_and_redirects_only_to_the_signed_url(endpoint: Endpoint) -> None:
    message_id = uuid.uuid4()
    target = "https://shop.example/offers?coffee=10"
    claims = endpoint.links.claims(message_id, uuid.uuid4(), Purpose.MARKETING)
    url = endpoint.links.click_url(claims, target)
    endpoint.clock.now += 60
    for _ in range(2):
        async with endpoint.http.get(url, allow_redirects=False) as response:
            assert response.status == 302
            assert response.headers["Location"] == target
            assert response.headers["Referrer-Policy"] == "no-referrer"
    [receipt] = endpoint.receipts.distinct(message_id).values()
    assert receipt.kind is ReceiptKind.CLICKED and receipt.detail == target and not receipt.machine

    # A scanner's HEAD is not a click.
    async with endpoint.http.head(url, allow_redirects=False) as response:
        assert response.status == 302
    assert len(endpoint.receipts.of(message_id)) == 2

    # The URL is inside the signature: a token for another target cannot be made from this one.
    base, _, token = url.rpartition("/")
    _, _, signature = token.rpartition(".")
    evil = endpoint.links.click_url(claims, "https://evil.example/").rpartition("/")[2]
    for forged in (
        f"{evil.rpartition('.')[0]}.{signature}",
        token[:-3] + "abc",
        "https%3A%2F%2Fevil.example",
    ):
        async with endpoint.http.get(f"{base}/{forged}", allow_redirects=False) as response:
            assert response.status == 400
            assert "Location" not in response.headers
    assert len(endpoint.receipts.of(message_id)) == 2


async def test_an_expired_click_token_still_redirects_but_reports_nothing(endpoint: Endpoint) -> None:
    message_id = uuid.uuid4()
    url = endpoint.links.click_url(
        endpoint.links.claims(message_id, uuid.uuid4(), Purpose.MARKETING), "https://shop.example/"
    )
    endpoint.clock.now += endpoint.links.ttl_s + 1
    async with endpoint.http.get(url, allow_redirects=False) as response:
        assert response.status == 302 and response.headers["Location"] == "https://shop.example/"
    assert endpoint.receipts.received == []


async def test_applications_mounted_on_the_endpoint_answer_for_themselves(neighbours: Neighbours) -> None:
    # The gateway's one HTTP server: the SMS vendor's callbacks are mounted under /sms.
    sms = web.Application()

    async def status(request: web.Request) -> web.Response:
        raise web.HTTPForbidden(text="bad signature")  # its own answer, not the email pages

    sms.router.add_post("/twilio/status", status)
    server = EmailLinkEndpoint(
        links=email_links(),
        profile=neighbours.profile,
        receipts=Receipts(),
        host="127.0.0.1",
        port=0,
        shutdown_grace_s=1.0,
    )
    server.mount(SMS_PREFIX, sms)
    with pytest.raises(ValueError, match="taken"):
        server.mount("/u", web.Application())
    await server.start()
    try:
        with pytest.raises(RuntimeError):
            server.mount("/late", web.Application())
        async with aiohttp.ClientSession() as http:
            async with http.post(f"http://127.0.0.1:{server.port}/sms/twilio/status") as answer:
                assert (answer.status, await answer.text()) == (403, "bad signature")
            async with http.get(f"http://127.0.0.1:{server.port}/c/forged") as answer:
                assert answer.status == 400 and "<h1>Link</h1>" in await answer.text()
    finally:
        await server.stop()
