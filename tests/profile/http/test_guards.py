"""The endpoint against browsers of other origins, stalled clients and write-key guessing, over real sockets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres
from omni_profile.http.guards import WriteKeyThrottle
from omni_profile.http.requests import LINGERING_S

from ..support import unique
from .conftest import Endpoint, basic, running_endpoint

IDLE_S = 1.0
BODY_S = 1.0
FAILURES = 5
WINDOW_S = 3.0
SHOP = "https://shop.example"


@pytest.fixture(scope="module")
async def guarded(postgres: EmbeddedPostgres, nats_server: EmbeddedNats) -> AsyncIterator[Endpoint]:
    """The endpoint for one shop's pages, with short timeouts and a small allowance of failed write keys."""
    async with running_endpoint(
        postgres,
        nats_server,
        http_allowed_origins=[SHOP],
        http_idle_timeout_s=IDLE_S,
        http_body_timeout_s=BODY_S,
        http_write_key_failures=FAILURES,
        http_write_key_failure_window_s=WINDOW_S,
    ) as running:
        yield running


def _track(**fields: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "messageId": unique("mid-"),
        "userId": unique("user-"),
        "event": "Viewed",
        **fields,
    }


def _address(endpoint: Endpoint) -> tuple[str, int]:
    host, _, port = endpoint.url.removeprefix("http://").rpartition(":")
    return host, int(port)


async def _closed_after(reader: asyncio.StreamReader, within_s: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    started = time.monotonic()
    received = b""
    async with asyncio.timeout(within_s):
        while chunk := await reader.read(4096):
            received += chunk
    return received, time.monotonic() - started


async def test_only_the_allowed_origin_may_post_from_a_browser(guarded: Endpoint) -> None:
    asked = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-retry-count"}
    async with guarded.session.options(f"{guarded.url}/v1/t", headers={**asked, "Origin": SHOP}) as allowed:
        assert allowed.status == 204
        assert allowed.headers["Access-Control-Allow-Origin"] == SHOP
    other = "https://elsewhere.example"
    async with guarded.session.options(f"{guarded.url}/v1/t", headers={**asked, "Origin": other}) as refused:
        assert refused.status == 403
        assert "Access-Control-Allow-Origin" not in refused.headers
    before = await guarded.services.counts()
    status, body = await guarded.post("/v1/track", _track(), headers={"Origin": other})
    assert (status, body["code"]) == (403, "forbidden_origin")
    assert await guarded.services.counts() == before
    status, _ = await guarded.post("/v1/track", _track(), headers={"Origin": SHOP})
    assert status == 200


async def test_a_client_that_stops_in_its_headers_is_disconnected(guarded: Endpoint) -> None:
    reader, writer = await asyncio.open_connection(*_address(guarded))
    writer.write(b"POST /v1/track HTTP/1.1\r\nHost: omni\r\nContent-Type: application/json\r\n")
    await writer.drain()
    received, elapsed = await _closed_after(reader, IDLE_S + 5)
    assert received == b""
    assert IDLE_S * 0.8 <= elapsed <= IDLE_S + 2
    writer.close()
    # One that sends nothing at all, too.
    reader, writer = await asyncio.open_connection(*_address(guarded))
    _, elapsed = await _closed_after(reader, IDLE_S + 5)
    assert elapsed <= IDLE_S + 2
    writer.close()


async def test_a_client_that_stops_in_its_body_gets_408_and_is_disconnected(guarded: Endpoint) -> None:
    reader, writer = await asyncio.open_connection(*_address(guarded))
    head = (
        "POST /v1/track HTTP/1.1\r\nHost: omni\r\nContent-Type: application/json\r\n"
        f"Authorization: {basic('wk_web')}\r\nContent-Length: 1000\r\n\r\n"
    )
    writer.write(head.encode() + b'{"type": "track", ')
    await writer.drain()
    received, elapsed = await _closed_after(reader, BODY_S + 5)
    assert received.startswith(b"HTTP/1.1 408"), received[:80]
    assert b"request_timeout" in received
    assert BODY_S * 0.8 <= elapsed <= BODY_S + LINGERING_S + 1
    writer.close()


async def test_an_address_that_keeps_failing_write_keys_is_held_off_then_let_back(guarded: Endpoint) -> None:
    message = _track()
    for attempt in range(FAILURES):
        status, body = await guarded.post("/v1/track", message, write_key=f"wk_guess_{attempt}")
        assert status == 401, body
    status, body = await guarded.post("/v1/track", message, write_key="wk_guess_next")
    assert (status, body["code"]) == (429, "too_many_requests")
    # Even the right key waits: a guess that hits must not be told apart from one that misses.
    async with guarded.session.post(
        f"{guarded.url}/v1/track", json=message, headers={"Authorization": basic("wk_web")}
    ) as response:
        assert response.status == 429
        retry_after = int(response.headers["Retry-After"])
        assert 1 <= retry_after <= WINDOW_S
    # Another address is not held off.
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with (
        aiohttp.ClientSession(connector=connector) as elsewhere,
        elsewhere.post(
            f"{guarded.url}/v1/track", json=_track(), headers={"Authorization": basic("wk_web")}
        ) as response,
    ):
        assert response.status == 200
    await asyncio.sleep(retry_after + 0.2)
    assert (await guarded.post("/v1/track", message))[0] == 200


def test_the_throttle_forgets_failures_past_the_window_and_bounds_the_addresses_it_remembers() -> None:
    now = [0.0]
    throttle = WriteKeyThrottle(3, 10.0, max_addresses=100, clock=lambda: now[0])
    for _ in range(3):
        throttle.failed("10.0.0.1")
        now[0] += 1.0
    assert throttle.retry_after("10.0.0.1") == 7  # the first failure leaves the window at 10 s
    now[0] = 10.5
    assert throttle.retry_after("10.0.0.1") is None
    # A flood from many addresses keeps only the latest ones.
    for index in range(1_000):
        throttle.failed(f"10.1.{index // 256}.{index % 256}")
    assert len(throttle) == 100
