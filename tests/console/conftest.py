"""The console against the five real services (started in this process, as the e2e stories start them), with
the small retailer's data set loaded through the public APIs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx
import pytest
from starlette.applications import Starlette

from examples.retailer import Loaded, Stubs, load
from omni.segmentation.v1 import segmentation_pb2
from omni_console.app import build
from omni_console.clients import Clients
from omni_console.settings import Settings
from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres, SmtpSink
from tests.conftest import fresh_database
from tests.e2e.conftest import Omni, running_omni

T = TypeVar("T")


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


@dataclass
class Stack:
    """The running services, what was loaded into them, and the console's settings to reach them."""

    omni: Omni
    loaded: Loaded
    settings: Settings


def console_settings(omni: Omni, **overrides: object) -> Settings:
    """The console's settings pointing at the running services."""
    ports = {name: runtime.port for name, runtime in omni.runtimes.items()}
    return Settings(
        http_port=0,
        identity_target=f"127.0.0.1:{ports['identity']}",
        profile_target=f"127.0.0.1:{ports['profile']}",
        segmentation_target=f"127.0.0.1:{ports['segmentation']}",
        decisioning_target=f"127.0.0.1:{ports['decisioning']}",
        gateway_target=f"127.0.0.1:{ports['gateway']}",
        **overrides,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
async def stack(
    postgres: EmbeddedPostgres, nats_server: EmbeddedNats, smtp_sink: SmtpSink
) -> AsyncIterator[Stack]:
    """The five services with the retailer's data set, once per test module."""
    # Segment sizes recorded every second (an hour by default), so the size chart has points.
    settings = {"segmentation": {"sizes_interval_s": 1.0}}
    async with running_omni(
        lambda prefix: fresh_database(postgres, prefix), nats_server, smtp_sink, settings=settings
    ) as omni:
        stubs = Stubs(omni.matching, omni.profile, omni.segmentation, omni.decisioning, omni.gateway)
        loaded = await load(stubs, count=12, weeks=3, seed=11)
        store_shoppers = loaded.segments["store-shoppers"]

        async def members() -> int:
            request = segmentation_pb2.CountSegmentMembersRequest(segment_id=store_shoppers)
            return int((await omni.segmentation.CountSegmentMembers(request)).member_count)

        await eventually(members, "the store shoppers in their segment")
        yield Stack(omni, loaded, console_settings(omni))


@dataclass
class Console:
    """The console application and an HTTP client talking to it."""

    app: Starlette
    http: httpx.AsyncClient
    clients: Clients


@pytest.fixture
async def console(stack: Stack) -> AsyncIterator[Console]:
    """The console with its full scopes, over HTTP (in-process transport)."""
    async with open_console(stack.settings) as opened:
        yield opened


class open_console:
    """The console with settings (its clients opened and closed around the block)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    async def __aenter__(self) -> Console:
        self._clients = Clients.open(self._settings)
        app = build(self._settings, self._clients)
        self._http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://console.test")
        return Console(app, self._http, self._clients)

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()
        await self._clients.close()
