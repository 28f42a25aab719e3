"""A local server speaking Twilio's Messages API, for the HTTP SMS provider's tests (aiohttp).

`POST /2010-04-01/Accounts/{AccountSid}/Messages.json` with HTTP basic auth and a form of To, From, Body and
StatusCallback answers as the vendor documents: 201 and the message as JSON (sid "SM" + 32 hex digits, status
"queued"), or an error body {code, message, more_info, status}: 401/20003 for bad credentials, 400/21604 without
To, 400/21211 for a To that is not a valid E.164 number (or is in `invalid_numbers`), 400/21602 without Body, 400/21617 for a Body over 1,600
characters, 429/20429 with Retry-After while `throttle` is set. After a 201 it posts the status callbacks "sent"
then "delivered" (or "undelivered" with ErrorCode 30005 for numbers in `unknown_handsets`), form-encoded and
signed with X-Twilio-Signature by its own implementation of the documented algorithm. `incoming` posts an
inbound message to a URL, signed the same way, as the vendor does for a number's messaging webhook. With
`callbacks_first` the callbacks are posted before the 201 is answered (a vendor whose callback overtakes its
answer to the send).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import secrets
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

_E164 = re.compile(r"^\+[1-9][0-9]{7,14}$")


def sign(auth_token: str, url: str, params: dict[str, str]) -> str:
    """Twilio's request signature: HMAC-SHA1 over the URL followed by every POST name and value, names sorted."""
    payload = url + "".join(f"{name}{params[name]}" for name in sorted(params))
    return base64.b64encode(hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()).decode()


@dataclass
class VendorMessage:
    sid: str
    to: str
    from_: str
    body: str
    status_callback: str


@dataclass
class SmsVendor:
    """The server; `start()`, then point the provider's base_url at `url`."""

    account_sid: str = "AC" + "0" * 32
    auth_token: str = "test-auth-token"
    throttle: bool = False
    callbacks_first: bool = False
    unknown_handsets: set[str] = field(default_factory=set)
    invalid_numbers: set[str] = field(default_factory=set)
    """Well-formed numbers answered 21211, as the vendor's own number lookup would."""
    messages: list[VendorMessage] = field(default_factory=list)
    requests: Counter[str] = field(default_factory=Counter)
    callbacks: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    """(HTTP status the gateway answered, the params) for every status callback posted."""
    port: int = 0
    _runner: web.AppRunner | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> SmsVendor:
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", self._create)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @staticmethod
    def _error(status: int, code: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
        return web.json_response(
            {
                "code": code,
                "message": message,
                "more_info": f"https://www.twilio.com/docs/errors/{code}",
                "status": status,
            },
            status=status,
            headers=headers,
        )

    async def _create(self, request: web.Request) -> web.Response:
        self.requests["create"] += 1
        expected = "Basic " + base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if request.headers.get("Authorization") != expected or request.match_info["sid"] != self.account_sid:
            return self._error(401, 20003, "Authenticate")
        if self.throttle:
            return self._error(429, 20429, "Too Many Requests", {"Retry-After": "3"})
        form = await request.post()
        to, sender, body = (str(form.get(name, "")) for name in ("To", "From", "Body"))
        if not to:
            return self._error(400, 21604, "A 'To' phone number is required.")
        if not _E164.match(to) or to in self.invalid_numbers:
            return self._error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if not body:
            return self._error(400, 21602, "Message body is required.")
        if len(body) > 1600:
            return self._error(400, 21617, "The concatenated message body exceeds the 1600 character limit.")
        message = VendorMessage(
            "SM" + secrets.token_hex(16), to, sender, body, str(form.get("StatusCallback", ""))
        )
        self.messages.append(message)
        if message.status_callback and self.callbacks_first:
            await self._callbacks(message)
        elif message.status_callback:
            task = asyncio.create_task(self._callbacks(message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return web.json_response(
            {
                "account_sid": self.account_sid,
                "sid": message.sid,
                "to": to,
                "from": sender,
                "body": body,
                "status": "queued",
                "num_segments": "1",
                "direction": "outbound-api",
                "api_version": "2010-04-01",
                "error_code": None,
                "error_message": None,
            },
            status=201,
        )

    async def _callbacks(self, message: VendorMessage) -> None:
        final = "undelivered" if message.to in self.unknown_handsets else "delivered"
        for status in ("sent", final):
            params = {
                "AccountSid": self.account_sid,
                "From": message.from_,
                "MessageSid": message.sid,
                "MessageStatus": status,
                "SmsSid": message.sid,
                "SmsStatus": status,
                "To": message.to,
                "ApiVersion": "2010-04-01",
            }
            if status == "undelivered":
                params["ErrorCode"] = "30005"
            answered = await self.post_signed(message.status_callback, params)
            self.callbacks.append((answered, params))

    async def post_signed(self, url: str, params: dict[str, str], *, signature: str | None = None) -> int:
        status, _ = await self.post_signed_text(url, params, signature=signature)
        return status

    async def post_signed_text(
        self, url: str, params: dict[str, str], *, signature: str | None = None
    ) -> tuple[int, str]:
        headers = {
            "X-Twilio-Signature": signature if signature is not None else sign(self.auth_token, url, params)
        }
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, data=params, headers=headers) as response,
        ):
            return response.status, await response.text()

    async def incoming(self, url: str, sender: str, body: str, **extra: Any) -> tuple[int, str]:
        """An inbound message from `sender`, posted to the number's messaging webhook."""
        params = {
            "AccountSid": self.account_sid,
            "MessageSid": "SM" + secrets.token_hex(16),
            "From": sender,
            "To": "+15005550006",
            "Body": body,
            "NumMedia": "0",
            **extra,
        }
        return await self.post_signed_text(url, params)
