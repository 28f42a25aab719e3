"""A local Web Push service (RFC 8030) playing the browser's side too, so a test can read what a push carried.

It does what a real push service does with a message: check the VAPID authorization (RFC 8292: an ES256 JWT
signed with the key in `k=`, for this service's origin, expiring within 24 hours, naming a contact in `sub`)
and the delivery headers (TTL required, Urgency and Topic well formed, Content-Encoding aes128gcm), and it
answers 201 with the message's Location. Then it does what the browser would: decrypt the body (RFC 8291,
with `http_ece` and the subscription's private key and auth secret, both generated here by the test) and
record what came out. A subscription can be made to answer 404/410 (gone) or 429/503 (with Retry-After)
instead.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import http_ece
import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from multidict import CIMultiDict

MAX_BODY = 4096
"""RFC 8030 §7.2: what a push service must accept; larger bodies are answered 413."""


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Subscription:
    """One browser's push subscription: the keys only the browser holds, and its endpoint here."""

    id: str
    endpoint: str
    private_key: ec.EllipticCurvePrivateKey
    auth_secret: bytes
    answer: tuple[int, dict[str, str]] | None = None
    """When set, every push to this subscription is answered with this status and headers, not delivered."""
    delay_s: float = 0.0
    """How long the service sits on a push to this subscription before answering (a stalled service)."""

    def p256dh(self) -> str:
        point = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return b64url(point)

    def to_json(self) -> str:
        """What the browser's `PushSubscription.toJSON()` gives the page (which registers it at identity)."""
        return json.dumps(
            {
                "endpoint": self.endpoint,
                "expirationTime": None,
                "keys": {"p256dh": self.p256dh(), "auth": b64url(self.auth_secret)},
            }
        )


@dataclass(frozen=True)
class Delivered:
    """A push the service took and the browser decrypted."""

    subscription_id: str
    payload: dict[str, Any]
    plaintext: bytes
    body_size: int
    headers: CIMultiDict[str]
    """As received (header names case-insensitive)."""
    claims: dict[str, Any]
    vapid_public_key: str


@dataclass
class PushService:
    """The running service: its origin, the subscriptions it knows, what it delivered and refused."""

    origin: str = ""
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    delivered: list[Delivered] = field(default_factory=list)
    refused: list[tuple[int, str]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def subscribe(self) -> Subscription:
        """A new subscription, as a browser gets from `pushManager.subscribe()`."""
        sub_id = uuid.uuid4().hex
        subscription = Subscription(
            id=sub_id,
            endpoint=f"{self.origin}/push/{sub_id}",
            private_key=ec.generate_private_key(ec.SECP256R1()),
            auth_secret=os.urandom(16),
        )
        self.subscriptions[sub_id] = subscription
        return subscription

    def delivered_to(self, subscription: Subscription) -> list[Delivered]:
        return [d for d in self.delivered if d.subscription_id == subscription.id]

    async def handle(self, request: web.Request) -> web.Response:
        subscription = self.subscriptions.get(request.match_info["sub_id"])
        if subscription is None:
            return self._refuse(404, "no such subscription")
        problem, claims, key = self._check_vapid(request.headers.get("Authorization", ""))
        if problem:
            return self._refuse(401 if claims is None else 403, problem)
        problem = _check_delivery_headers(request.headers)
        if problem:
            return self._refuse(400, problem)
        body = await request.read()
        if subscription.delay_s:
            await asyncio.sleep(subscription.delay_s)
        if len(body) > MAX_BODY:
            return self._refuse(413, f"body of {len(body)} bytes")
        if subscription.answer is not None:
            status, headers = subscription.answer
            self.refused.append((status, "on demand"))
            return web.Response(status=status, headers=headers, text="answered on demand")
        try:
            plaintext = http_ece.decrypt(
                body,
                private_key=subscription.private_key,
                auth_secret=subscription.auth_secret,
                version="aes128gcm",
            )
        except Exception as error:
            return self._refuse(400, f"does not decrypt: {error!r}")
        self.delivered.append(
            Delivered(
                subscription_id=subscription.id,
                payload=json.loads(plaintext),
                plaintext=plaintext,
                body_size=len(body),
                headers=CIMultiDict(request.headers),
                claims=claims or {},
                vapid_public_key=key,
            )
        )
        self.arrived.set()
        return web.Response(status=201, headers={"Location": f"{self.origin}/messages/{uuid.uuid4().hex}"})

    def _refuse(self, status: int, why: str) -> web.Response:
        self.refused.append((status, why))
        return web.Response(status=status, text=why)

    def _check_vapid(self, authorization: str) -> tuple[str, dict[str, Any] | None, str]:
        """RFC 8292 §3: `vapid t=<JWT>, k=<P-256 public key>`; the JWT verifies with k, aud is this origin,
        exp is less than 24 hours away, sub is present. (problem, claims, k)."""
        match = re.fullmatch(r"vapid\s+(.+)", authorization.strip(), re.IGNORECASE)
        if not match:
            return "no vapid authorization", None, ""
        params = dict(part.strip().split("=", 1) for part in match.group(1).split(",") if "=" in part)
        token, k = params.get("t", ""), params.get("k", "")
        try:
            public_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64url(k))
            claims: dict[str, Any] = jwt.decode(
                token,
                public_key,
                algorithms=["ES256"],
                audience=self.origin,
                options={"require": ["aud", "exp", "sub"]},
            )
        except (ValueError, jwt.InvalidTokenError) as error:
            return f"vapid token refused: {error}", None, k
        if claims["exp"] > time.time() + 24 * 3600:
            return "vapid token expires more than 24 hours from now", claims, k
        if not str(claims["sub"]).startswith(("mailto:", "https:")):
            return "vapid sub is no contact", claims, k
        return "", claims, k


def _check_delivery_headers(headers: Any) -> str:
    ttl = headers.get("TTL", "")
    if not ttl.isdigit():
        return "TTL header missing or not a number"
    if headers.get("Content-Encoding", "") != "aes128gcm":
        return "Content-Encoding is not aes128gcm"
    urgency = headers.get("Urgency")
    if urgency is not None and urgency not in ("very-low", "low", "normal", "high"):
        return f"bad Urgency {urgency!r}"
    topic = headers.get("Topic")
    if topic is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", topic):
        return f"bad Topic {topic!r}"
    return ""


@asynccontextmanager
async def running_push_service() -> AsyncIterator[PushService]:
    """The push service on a free loopback port."""
    service = PushService()
    app = web.Application(client_max_size=64 * 1024)
    app.router.add_post("/push/{sub_id}", service.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    service.origin = f"http://127.0.0.1:{port}"
    try:
        yield service
    finally:
        await runner.cleanup()
