"""A local APNs for the APNs provider's tests: an ASGI application served over HTTP/2 (h2c, prior knowledge)
by hypercorn, answering as Apple documents.

`POST /3/device/<token>` must come over HTTP/2 with `authorization: bearer <provider token>`: an ES256 JWT
checked with the team key's public key (`kid` the key id, `iss` the team id, `iat` within the last hour: else
403 InvalidProviderToken or ExpiredProviderToken), `apns-topic` the app's bundle id (else 400 BadTopic /
DeviceTokenNotForTopic), `apns-push-type` alert or background, `apns-priority` 5 or 10, `apns-expiration` and
`apns-id` well formed, and a JSON body with `aps` of at most 4,096 bytes (else 413 PayloadTooLarge). It answers
200 with the apns-id, or the error JSON `{"reason": ...}` (410 Unregistered with a timestamp) for the tokens a
test names: `unregistered`, `bad_tokens` (400 BadDeviceToken), `throttled` (429 TooManyRequests),
`unavailable` (503 ServiceUnavailable). `expire_tokens_before` makes it call older provider tokens expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from hypercorn.asyncio import serve
from hypercorn.config import Config

from omni_kit.embedded import free_port

KEY_ID = "ABC123DEFG"
TEAM_ID = "DEF123GHIJ"
TOPIC = "com.coffee.app"
_TOKEN = re.compile(r"[0-9a-f]{64,200}")


@dataclass
class Notification:
    """What APNs took."""

    device_token: str
    headers: dict[str, str]
    payload: dict[str, Any]
    http_version: str


@dataclass
class LocalApns:
    """The server; `url` once running."""

    public_key: ec.EllipticCurvePublicKey
    url: str = ""
    delivered: list[Notification] = field(default_factory=list)
    unregistered: set[str] = field(default_factory=set)
    bad_tokens: set[str] = field(default_factory=set)
    throttled: set[str] = field(default_factory=set)
    unavailable: set[str] = field(default_factory=set)
    expire_tokens_before: float = 0.0
    provider_tokens_seen: list[str] = field(default_factory=list)
    refused: list[tuple[int, str]] = field(default_factory=list)

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        status, answer, apns_id = self._answer(scope, body)
        if status != 200:
            self.refused.append((status, str(answer.get("reason", ""))))
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"apns-id", apns_id.encode())]
                + ([(b"content-type", b"application/json")] if answer else []),
            }
        )
        await send({"type": "http.response.body", "body": json.dumps(answer).encode() if answer else b""})

    def _answer(self, scope: dict[str, Any], body: bytes) -> tuple[int, dict[str, Any], str]:
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        apns_id = headers.get("apns-id") or str(uuid.uuid4())
        if scope["http_version"] != "2":
            return 400, {"reason": "BadRequest (HTTP/2 only)"}, apns_id
        path = scope["path"]
        if scope["method"] != "POST" or not path.startswith("/3/device/"):
            return 405 if scope["method"] != "POST" else 404, {"reason": "BadPath"}, apns_id
        try:
            uuid.UUID(apns_id)
        except ValueError:
            return 400, {"reason": "BadMessageId"}, apns_id
        reason = self._check_token(headers.get("authorization", ""))
        if reason:
            return 403, {"reason": reason}, apns_id
        if headers.get("apns-topic") != TOPIC:
            return 400, {"reason": "BadTopic" if "apns-topic" in headers else "MissingTopic"}, apns_id
        if headers.get("apns-push-type") not in ("alert", "background"):
            return 400, {"reason": "InvalidPushType"}, apns_id
        if headers.get("apns-priority") not in ("5", "10"):
            return 400, {"reason": "BadPriority"}, apns_id
        if not headers.get("apns-expiration", "").isdigit():
            return 400, {"reason": "BadExpirationDate"}, apns_id
        if len(headers.get("apns-collapse-id", "").encode()) > 64:
            return 400, {"reason": "BadCollapseId"}, apns_id
        if len(body) > 4096:
            return 413, {"reason": "PayloadTooLarge"}, apns_id
        try:
            payload = json.loads(body)
        except ValueError:
            return 400, {"reason": "PayloadEmpty"}, apns_id
        if not isinstance(payload, dict) or not isinstance(payload.get("aps"), dict):
            return 400, {"reason": "PayloadEmpty"}, apns_id
        device = path.removeprefix("/3/device/")
        if not _TOKEN.fullmatch(device) or device in self.bad_tokens:
            return 400, {"reason": "BadDeviceToken"}, apns_id
        if device in self.unregistered:
            return 410, {"reason": "Unregistered", "timestamp": int(time.time() * 1000)}, apns_id
        if device in self.throttled:
            return 429, {"reason": "TooManyRequests"}, apns_id
        if device in self.unavailable:
            return 503, {"reason": "ServiceUnavailable"}, apns_id
        self.delivered.append(Notification(device, headers, payload, scope["http_version"]))
        return 200, {}, apns_id

    def _check_token(self, authorization: str) -> str:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return "MissingProviderToken"
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(
                token, self.public_key, algorithms=["ES256"], options={"require": ["iss", "iat"]}
            )
        except jwt.PyJWTError:
            return "InvalidProviderToken"
        if header.get("kid") != KEY_ID or claims.get("iss") != TEAM_ID:
            return "InvalidProviderToken"
        issued = float(claims["iat"])
        if issued < time.time() - 3600 or issued < self.expire_tokens_before:
            return "ExpiredProviderToken"
        self.provider_tokens_seen.append(token)
        return ""


@contextlib.asynccontextmanager
async def running_apns(public_key: ec.EllipticCurvePublicKey) -> AsyncIterator[LocalApns]:
    """The local APNs on a free loopback port, HTTP/2 over cleartext."""
    server = LocalApns(public_key)
    port = free_port("127.0.0.1")
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.loglevel = "WARNING"
    config.accesslog = None
    config.graceful_timeout = 0.5
    stop = asyncio.Event()
    task = asyncio.create_task(serve(server, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
    server.url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            writer.close()
            break
        yield server
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, timeout=5)
