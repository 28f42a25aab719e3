"""A retailer's webhook endpoint, for real, on this machine: an aiohttp server that verifies every delivery
with the Standard Webhooks library's own verifier (`Webhook(secret).verify`), as a receiver following the
specification would, and answers as the test tells it (a status, a Retry-After, a delay, a body)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError


def new_secret(size: int = 32) -> str:
    """A fresh Standard Webhooks secret: `whsec_` + base64 of random bytes."""
    return "whsec_" + base64.b64encode(os.urandom(size)).decode()


@dataclass
class Delivery:
    """One request the endpoint received."""

    headers: dict[str, str]
    body: bytes
    payload: Any
    """The JSON the verifier returned; None when the signature did not verify."""
    peer_port: int
    """The sender's port: one per connection, so the number of ports is the number of connections."""

    @property
    def verified(self) -> bool:
        return self.payload is not None


@dataclass
class Answer:
    """How the endpoint answers a request."""

    status: int = 200
    body: str = "ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


class Receiver:
    """The endpoint: verifies with `secrets` (any of them), records, answers `answer` (or 401 when no secret
    verifies, as a receiver must)."""

    def __init__(self, *secrets: str) -> None:
        self.verifiers = [Webhook(secret) for secret in secrets]
        self.answer = Answer()
        self.deliveries: list[Delivery] = []
        self.url = ""
        self.arrived = asyncio.Event()

    @property
    def verified(self) -> list[Delivery]:
        return [d for d in self.deliveries if d.verified]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = dict(request.headers)
        payload = None
        for verifier in self.verifiers:
            try:
                payload = verifier.verify(body, headers)
                break
            except WebhookVerificationError:
                continue
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.deliveries.append(Delivery(headers, body, payload, peer[1] if peer else 0))
        self.arrived.set()
        if payload is None:
            return web.Response(status=401, text="signature does not verify")
        answer = self.answer
        if answer.delay_s:
            await asyncio.sleep(answer.delay_s)
        return web.Response(status=answer.status, text=answer.body, headers=answer.headers)


@contextlib.asynccontextmanager
async def receiving(receiver: Receiver) -> AsyncIterator[Receiver]:
    """Serve the receiver on 127.0.0.1 (a free port) while the block runs."""
    app = web.Application()
    app.router.add_post("/hooks", receiver._handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    receiver.url = f"http://127.0.0.1:{port}/hooks"
    try:
        yield receiver
    finally:
        await runner.cleanup()
