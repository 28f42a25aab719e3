"""The gateway's HTTP endpoint for what recipients do with an email: unsubscribe, open, click (aiohttp).

- `POST /u/{token}` with the body `List-Unsubscribe=One-Click` (RFC 8058, form-encoded or multipart) revokes
  the person's marketing email consent in profile (`SetConsent`, source `list_unsubscribe`) and reports a
  `Receipt(UNSUBSCRIBED)`; it answers 200 with a short page and never redirects, as RFC 8058 requires. Without
  that body: 400, nothing changed.
- `GET /u/{token}` only shows a page with a button that makes that POST: link scanners and prefetchers GET
  every link of an email, so a GET never unsubscribes.
- `GET /o/{token}.gif` answers a 1x1 transparent GIF (`Cache-Control: no-store`) and reports
  `Receipt(OPENED)`; a token that is not authentic or expired gets the GIF too (a broken image helps nobody)
  and reports nothing.
- `GET /c/{token}` reports `Receipt(CLICKED)` and redirects (302) to the URL inside the signed token, so the
  endpoint cannot be made to redirect anywhere else (no open redirect); a token not authentic: 400, no
  redirect. An expired click token still redirects (the link of an old email keeps working) but reports
  nothing. HEAD requests (scanners) never report.

Unsubscribe tokens not authentic: 400; expired: 410; a person profile no longer knows (erased): 410; profile
unavailable: 503 with Retry-After, so a mail provider's one-click POST is tried again. Bodies over 64 KiB: 413.

Machine opens and clicks (`Receipt.machine`): an open or click within `machine_window_s` (10 s) of the email
being built for sending (the token's issue time: image proxies and security scanners fetch as the email
arrives, a person rarely opens it that fast), or from a user agent naming a known image proxy, mail security
scanner or HTTP library (MACHINE_USER_AGENTS), or from none at all. Such receipts are still reported, flagged.

It is the gateway's one HTTP server: other endpoints are aiohttp applications mounted under a prefix before
start (`mount`), such as the HTTP SMS vendor's callbacks under `SMS_PREFIX` (/sms); their requests are theirs
alone (this endpoint's error pages do not apply to them).

Receipts carry stable provider event ids, so the receipt sink's deduplication keeps one of each:
`unsubscribe:<message>`, `open:<message>:<human|machine>`, `click:<message>:<url hash>:<human|machine>`.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from html import escape

import grpc
from aiohttp import web

from omni.common.v1 import common_pb2
from omni.profile.v1 import profile_pb2, profile_pb2_grpc
from omni_gateway.email_links import EmailLinks, LinkClaims, LinkKind, TokenExpired, TokenInvalid
from omni_gateway.providers.base import Receipt, ReceiptKind, ReceiptSink

log = logging.getLogger(__name__)

__all__ = ["MACHINE_USER_AGENTS", "PIXEL", "PROVIDER", "SMS_PREFIX", "EmailLinkEndpoint", "is_machine"]

PROVIDER = "email"
"""The provider name of the receipts this endpoint reports."""

MAX_BODY_BYTES = 64 * 1024

SMS_PREFIX = "/sms"
"""Where the HTTP SMS vendor's callbacks (sms_inbound.sms_callbacks_app) are mounted."""

PIXEL = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
"""A 1x1 transparent GIF (43 bytes)."""

MACHINE_USER_AGENTS: tuple[str, ...] = (
    "googleimageproxy",
    "ggpht.com",
    "yahoomailproxy",
    "bingpreview",
    "barracuda",
    "mimecast",
    "proofpoint",
    "messagelabs",
    "symantec",
    "trendmicro",
    "forcepoint",
    "zscaler",
    "ironport",
    "fireeye",
    "python-requests",
    "python-urllib",
    "aiohttp",
    "curl/",
    "wget/",
    "go-http-client",
    "okhttp",
    "java/",
    "bot",
    "crawler",
    "spider",
    "scanner",
)
"""Lower-case fragments of user agents that fetch on a machine's behalf, not a person's."""

_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_machine(user_agent: str | None, issued_at: float, now: float, window_s: float) -> bool:
    """Whether an open or click was a machine's: too soon after sending, or a known machine user agent."""
    if now - issued_at < window_s:
        return True
    agent = (user_agent or "").lower()
    return not agent.strip() or any(fragment in agent for fragment in MACHINE_USER_AGENTS)


class EmailLinkEndpoint:
    """The routes and server; start() binds, stop() lets requests in flight end."""

    def __init__(
        self,
        *,
        links: EmailLinks,
        profile: profile_pb2_grpc.ProfileServiceAsyncStub,
        receipts: ReceiptSink,
        host: str,
        port: int,
        shutdown_grace_s: float = 10.0,
        machine_window_s: float = 10.0,
        profile_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.time,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._links = links
        self._ssl_context = ssl_context
        self._profile = profile
        self._receipts = receipts
        self._host = host
        self._port = port
        self._grace_s = shutdown_grace_s
        self._machine_window_s = machine_window_s
        self._profile_timeout_s = profile_timeout_s
        self._clock = clock
        self._runner: web.AppRunner | None = None
        self._mounted: dict[str, web.Application] = {}

    def mount(self, prefix: str, app: web.Application) -> None:
        """Serve `app` under `prefix` (e.g. SMS_PREFIX) from this server; before start() only."""
        if self._runner is not None:
            raise RuntimeError("mount before start()")
        if prefix in self._mounted or prefix.rstrip("/") in ("", "/u", "/o", "/c"):
            raise ValueError(f"{prefix!r} is taken")
        self._mounted[prefix] = app

    def application(self) -> web.Application:
        """The aiohttp application with every route."""
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._errors])
        app.router.add_get("/u/{token}", self._unsubscribe_page)
        app.router.add_post("/u/{token}", self._unsubscribe)
        app.router.add_get("/o/{name}", self._open)
        app.router.add_get("/c/{token}", self._click)
        for prefix, mounted in self._mounted.items():
            app.add_subapp(prefix, mounted)
        return app

    async def start(self) -> None:
        """Bind and serve; with port 0 a free port is chosen (see `port`)."""
        self._runner = web.AppRunner(self.application(), access_log=None, shutdown_timeout=self._grace_s)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port, ssl_context=self._ssl_context).start()
        self._port = int(self._runner.addresses[0][1])
        log.info(
            "gateway HTTP endpoint (email links%s) on %s://%s:%d",
            "".join(f", {prefix}" for prefix in self._mounted),
            "https" if self._ssl_context is not None else "http",
            self._host,
            self._port,
        )

    @property
    def port(self) -> int:
        """The port the endpoint listens on."""
        return self._port

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish within the grace period, close."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # Unsubscribe

    async def _unsubscribe_page(self, request: web.Request) -> web.Response:
        self._unsubscribe_claims(request.match_info["token"])
        return _page(
            200,
            "Unsubscribe",
            "<p>Do you want to stop receiving marketing emails from us?</p>"
            '<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">'
            '<button type="submit">Unsubscribe</button></form>',
        )

    async def _unsubscribe(self, request: web.Request) -> web.Response:
        claims = self._unsubscribe_claims(request.match_info["token"])
        form = await request.post()
        if form.get("List-Unsubscribe") != "One-Click":
            raise _PageError(
                400, "Unsubscribe", "The request did not ask to unsubscribe (List-Unsubscribe=One-Click)."
            )
        try:
            await self._profile.SetConsent(
                profile_pb2.SetConsentRequest(
                    person_id=str(claims.person_id),
                    consent=profile_pb2.Consent(
                        channel=common_pb2.CHANNEL_EMAIL,
                        state=profile_pb2.CONSENT_STATE_REVOKED,
                        purpose=profile_pb2.CONSENT_PURPOSE_MARKETING,
                        source="list_unsubscribe",
                    ),
                ),
                timeout=self._profile_timeout_s,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise _PageError(410, "Unsubscribe", "We no longer hold this address.") from error
            log.warning("unsubscribe of message %s: profile answered %s", claims.message_id, error.code())
            raise _PageError(
                503, "Unsubscribe", "Please try again in a minute.", headers={"Retry-After": "60"}
            ) from error
        await self._report(claims, ReceiptKind.UNSUBSCRIBED, f"unsubscribe:{claims.message_id}", "one-click")
        return _page(200, "Unsubscribed", "<p>You will no longer receive marketing emails from us.</p>")

    def _unsubscribe_claims(self, token: str) -> LinkClaims:
        try:
            return self._links.verify(LinkKind.UNSUBSCRIBE, token)
        except TokenExpired as error:
            raise _PageError(410, "Unsubscribe", "This unsubscribe link has expired.") from error
        except TokenInvalid as error:
            raise _PageError(400, "Unsubscribe", "This unsubscribe link is not valid.") from error

    # Opens and clicks

    async def _open(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        claims = None
        if name.endswith(".gif"):
            try:
                claims = self._links.verify(LinkKind.OPEN, name.removesuffix(".gif"))
            except (TokenInvalid, TokenExpired):
                claims = None
        if claims is not None and request.method == "GET":
            machine = self._machine(request, claims)
            event_id = f"open:{claims.message_id}:{'machine' if machine else 'human'}"
            await self._report(claims, ReceiptKind.OPENED, event_id, "", machine=machine)
        return web.Response(
            body=PIXEL,
            content_type="image/gif",
            headers={"Cache-Control": "no-store, no-cache, must-revalidate, max-age=0", "Pragma": "no-cache"},
        )

    async def _click(self, request: web.Request) -> web.Response:
        try:
            claims = self._links.verify(LinkKind.CLICK, request.match_info["token"])
        except TokenExpired as expired:
            claims, report = expired.claims, False
        except TokenInvalid as error:
            raise _PageError(400, "Link", "This link is not valid.") from error
        else:
            report = request.method == "GET"
        if not claims.url:
            raise _PageError(400, "Link", "This link is not valid.")
        if report:
            machine = self._machine(request, claims)
            url_hash = hashlib.sha256(claims.url.encode()).hexdigest()[:16]
            event_id = f"click:{claims.message_id}:{url_hash}:{'machine' if machine else 'human'}"
            await self._report(claims, ReceiptKind.CLICKED, event_id, claims.url, machine=machine)
        return web.Response(
            status=302,
            headers={"Location": claims.url, "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
        )

    def _machine(self, request: web.Request, claims: LinkClaims) -> bool:
        return is_machine(
            request.headers.get("User-Agent"), claims.issued_at, self._clock(), self._machine_window_s
        )

    async def _report(
        self, claims: LinkClaims, kind: ReceiptKind, event_id: str, detail: str, *, machine: bool = False
    ) -> None:
        await self._receipts(
            Receipt(
                provider=PROVIDER,
                kind=kind,
                provider_event_id=event_id,
                occurred_at=datetime.fromtimestamp(self._clock(), UTC),
                message_id=claims.message_id,
                detail=detail,
                machine=machine,
            )
        )

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if len(request.match_info.apps) > 1:  # a mounted application's request: its own answers
            return await handler(request)
        try:
            return await handler(request)
        except _PageError as error:
            return _page(error.status, error.title, f"<p>{escape(error.text)}</p>", error.headers)
        except web.HTTPException as error:
            return _page(error.status, error.reason, f"<p>{escape(error.reason)}</p>")
        except Exception:
            # A receipt that could not be reported is worth a retry by the client (a POST is repeated by mail
            # providers; the receipt's event id makes the repeat harmless).
            log.exception("email link endpoint failed on %s", request.path)
            return _page(503, "Sorry", "<p>Please try again in a minute.</p>", {"Retry-After": "60"})


class _PageError(Exception):
    def __init__(self, status: int, title: str, text: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(text)
        self.status, self.title, self.text, self.headers = status, title, text, headers or {}


def _page(status: int, title: str, body_html: str, headers: dict[str, str] | None = None) -> web.Response:
    html = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem}"
        "button{font-size:1rem;padding:.5rem 1.5rem}</style></head>"
        f"<body><h1>{escape(title)}</h1>{body_html}</body></html>"
    )
    return web.Response(
        status=status, text=html, content_type="text/html", headers={**_PAGE_HEADERS, **(headers or {})}
    )
