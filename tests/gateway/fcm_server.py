"""A local server speaking Firebase Cloud Messaging's HTTP v1 API and Google's OAuth 2.0 token endpoint.

`POST /token` is the JWT-bearer grant (RFC 7523) as oauth2.googleapis.com answers it: the assertion must be an
RS256 JWT that verifies with the test service account's public key, `iss` its client_email, `aud` this
token endpoint, the firebase.messaging scope, at most an hour long and not expired; it answers an access
token with `expires_in`. `POST /v1/projects/{project}/messages:send` checks the bearer token (known, not
expired: else 401 UNAUTHENTICATED) and the message as the v1 API does (unknown fields, exactly one target,
string data without reserved keys, android/apns/webpush shapes: else 400 INVALID_ARGUMENT), and answers
`{"name": "projects/{project}/messages/{id}"}`; an unregistered token gets 404 UNREGISTERED, and any answer
can be queued on demand (429 QUOTA_EXCEEDED, 503 UNAVAILABLE with Retry-After).
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"

_MESSAGE_FIELDS = {
    "name",
    "data",
    "notification",
    "android",
    "webpush",
    "apns",
    "fcm_options",
    "token",
    "topic",
    "condition",
}
_NOTIFICATION_FIELDS = {"title", "body", "image"}
_ANDROID_FIELDS = {
    "collapse_key",
    "priority",
    "ttl",
    "restricted_package_name",
    "data",
    "notification",
    "fcm_options",
    "direct_boot_ok",
}
_APNS_FIELDS = {"headers", "payload", "fcm_options"}
_WEBPUSH_FIELDS = {"headers", "data", "notification", "fcm_options"}
_RESERVED = {"from", "notification", "message_type"}


@dataclass
class FcmServer:
    """The running server: its test service account, tokens issued, messages taken."""

    origin: str = ""
    project_id: str = "omni-coffee-test"
    private_key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    private_key_id: str = field(default_factory=lambda: secrets.token_hex(20))
    client_email: str = "omni-push@omni-coffee-test.iam.gserviceaccount.com"
    token_lifetime_s: int = 3600
    access_tokens: dict[str, float] = field(default_factory=dict)
    grants: int = 0
    refused_grants: list[str] = field(default_factory=list)
    unregistered: set[str] = field(default_factory=set)
    messages: list[dict[str, Any]] = field(default_factory=list)
    answers: list[tuple[int, dict[str, Any], dict[str, str]]] = field(default_factory=list)
    """Queued answers to the next sends, instead of taking them."""
    delay_s: float = 0.0
    """How long messages:send sits on a request before answering (a stalled API)."""

    @property
    def token_uri(self) -> str:
        return f"{self.origin}/token"

    def service_account_json(self) -> str:
        """The key file a Google Cloud console would give for the test service account."""
        pem = self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        return json.dumps(
            {
                "type": "service_account",
                "project_id": self.project_id,
                "private_key_id": self.private_key_id,
                "private_key": pem,
                "client_email": self.client_email,
                "client_id": "1234567890",
                "auth_uri": "https://accounts.google.com/o/oauth2/auth",
                "token_uri": self.token_uri,
            }
        )

    def expire_tokens(self) -> None:
        """Every access token issued so far stops working (as when Google revokes them)."""
        self.access_tokens.clear()

    def queue(self, status: int, code: str, *, retry_after: str | None = None) -> None:
        """The next send is answered with this FCM error."""
        headers = {"Retry-After": retry_after} if retry_after else {}
        self.answers.append((status, _error(status, code, f"{code} on demand"), headers))

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != JWT_BEARER:
            return self._refuse_grant("unsupported_grant_type", "grant_type must be the JWT bearer grant")
        try:
            header = jwt.get_unverified_header(str(form.get("assertion", "")))
            claims = jwt.decode(
                str(form.get("assertion", "")),
                self.private_key.public_key(),
                algorithms=["RS256"],
                audience=self.token_uri,
                issuer=self.client_email,
                options={"require": ["iss", "aud", "exp", "iat", "scope"]},
            )
        except jwt.InvalidTokenError as error:
            return self._refuse_grant("invalid_grant", f"Invalid JWT: {error}")
        if header.get("kid") != self.private_key_id:
            return self._refuse_grant("invalid_grant", "Invalid JWT Signature (unknown kid).")
        if claims["exp"] - claims["iat"] > 3600:
            return self._refuse_grant("invalid_grant", "Invalid JWT: exp more than an hour after iat")
        if SCOPE not in str(claims["scope"]).split():
            return self._refuse_grant("invalid_scope", "the firebase.messaging scope is required")
        self.grants += 1
        token = "ya29." + secrets.token_urlsafe(32)
        self.access_tokens[token] = time.time() + self.token_lifetime_s
        return web.json_response(
            {"access_token": token, "expires_in": self.token_lifetime_s, "token_type": "Bearer"}
        )

    def _refuse_grant(self, error: str, description: str) -> web.Response:
        self.refused_grants.append(description)
        return web.json_response({"error": error, "error_description": description}, status=400)

    async def send(self, request: web.Request) -> web.Response:
        bearer = re.fullmatch(r"Bearer (\S+)", request.headers.get("Authorization", ""))
        expires = self.access_tokens.get(bearer.group(1)) if bearer else None
        if expires is None or expires < time.time():
            return _error_response(401, "UNAUTHENTICATED", "Request had invalid credentials.")
        if request.match_info["project"] != self.project_id:
            return _error_response(403, "PERMISSION_DENIED", "wrong project")
        try:
            body = json.loads(await request.text())
        except ValueError:
            return _error_response(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        problem = _check_message(body)
        if problem:
            return _error_response(400, "INVALID_ARGUMENT", problem)
        if self.answers:
            status, answer, headers = self.answers.pop(0)
            return web.json_response(answer, status=status, headers=headers)
        message = body["message"]
        if message.get("token") in self.unregistered:
            return _error_response(
                404, "NOT_FOUND", "Requested entity was not found.", fcm_code="UNREGISTERED"
            )
        self.messages.append(message)
        name = f"projects/{self.project_id}/messages/{uuid.uuid4().int % 10**19}"
        return web.json_response({"name": name})


def _error_response(status: int, code: str, message: str, *, fcm_code: str = "") -> web.Response:
    return web.json_response(_error(status, code, message, fcm_code=fcm_code), status=status)


def _error(status: int, code: str, message: str, *, fcm_code: str = "") -> dict[str, Any]:
    """A google.rpc.Status as FCM answers it; FCM's own code in an FcmError detail."""
    fcm_codes = ("QUOTA_EXCEEDED", "UNAVAILABLE", "INTERNAL", "UNREGISTERED", "SENDER_ID_MISMATCH")
    fcm = fcm_code or (code if code in (*fcm_codes, "THIRD_PARTY_AUTH_ERROR") else "")
    status_name = {
        429: "RESOURCE_EXHAUSTED",
        503: "UNAVAILABLE",
        500: "INTERNAL",
        401: "UNAUTHENTICATED",
        403: "PERMISSION_DENIED",
    }.get(status, code)
    error: dict[str, Any] = {"code": status, "message": message, "status": status_name}
    if fcm:
        error["details"] = [
            {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": fcm}
        ]
    return {"error": error}


def _check_message(body: Any) -> str:
    """What the v1 API would refuse in a send request ('' when nothing)."""
    if not isinstance(body, dict) or set(body) - {"message", "validate_only"} or "message" not in body:
        return "Invalid JSON payload received. Expected {message}."
    message = body["message"]
    if not isinstance(message, dict):
        return "message must be an object"
    unknown = set(message) - _MESSAGE_FIELDS
    if unknown:
        return f"Invalid JSON payload received. Unknown name \"{sorted(unknown)[0]}\" at 'message'"
    if sum(1 for k in ("token", "topic", "condition") if message.get(k)) != 1:
        return "exactly one of token, topic or condition is required"
    notification = message.get("notification", {})
    if set(notification) - _NOTIFICATION_FIELDS or not all(isinstance(v, str) for v in notification.values()):
        return "notification takes title, body and image strings"
    data = message.get("data", {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        return "data values must be strings"
    if any(k in _RESERVED or k.startswith(("google", "gcm")) for k in data):
        return "data holds a reserved key"
    android = message.get("android", {})
    if set(android) - _ANDROID_FIELDS:
        return "unknown field in android"
    if "ttl" in android and not re.fullmatch(r"\d+(\.\d{1,9})?s", android["ttl"]):
        return "android.ttl is a duration such as 3.5s"
    if android.get("priority", "NORMAL") not in ("NORMAL", "HIGH"):
        return "android.priority is NORMAL or HIGH"
    apns = message.get("apns", {})
    if set(apns) - _APNS_FIELDS or not all(isinstance(v, str) for v in apns.get("headers", {}).values()):
        return "apns takes headers (strings), payload and fcm_options"
    webpush = message.get("webpush", {})
    if set(webpush) - _WEBPUSH_FIELDS:
        return "unknown field in webpush"
    link = webpush.get("fcm_options", {}).get("link")
    if link is not None and not str(link).startswith("https://"):
        return "webpush.fcm_options.link must be an https URL"
    if len(json.dumps(message).encode()) > 4096 + 2048:
        return "Message is too big"
    return ""


@asynccontextmanager
async def running_fcm_server() -> AsyncIterator[FcmServer]:
    """The token endpoint and the FCM API on a free loopback port."""
    server = FcmServer()
    app = web.Application()
    app.router.add_post("/token", server.token)
    app.router.add_post("/v1/projects/{project}/messages:send", server.send)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert site._server is not None
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    server.origin = f"http://127.0.0.1:{port}"
    try:
        yield server
    finally:
        await runner.cleanup()
