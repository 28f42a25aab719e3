"""The Segment-compatible tracking endpoint: an aiohttp server next to gRPC in the profile process.

Routes follow the Segment Tracking API (POST /v1/identify, /v1/track, /v1/page, /v1/screen, /v1/group,
/v1/alias, /v1/batch and /v1/import), plus the one-letter paths analytics.js posts to (/v1/i, /v1/t …,
/v1/b). The write key comes from HTTP Basic authentication (the key as user name, no password) or from
writeKey in the body. Answers are JSON: 200 {"success": true}; 400 for a malformed body or message, 401
for a missing or unknown write key, 413 for a body over 500 KB, 503 when identity is unavailable or the
batch kept conflicting with concurrent writes (the libraries retry). In a batch, refused messages are listed with their reasons and the others are recorded.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from omni_kit.errors import Aborted, FieldViolation, Unavailable, Violations
from omni_profile import wire
from omni_profile.http import segment
from omni_profile.http.intake import Intake, Outcome, Pending, Rejection
from omni_profile.http.lookup import IdentifierLookup
from omni_profile.http.sources import Source

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 500 * 1024
"""The largest request body Segment accepts (after decompression)."""

# Path → message type; None is a batch.
ROUTES: dict[str, str | None] = {
    **{kind: kind for kind in segment.MESSAGE_TYPES},
    **{kind[0]: kind for kind in segment.MESSAGE_TYPES},
    "batch": None,
    "import": None,
    "b": None,
}

_CORS = {
    # analytics.js posts from the shop's pages to another origin, as text/plain to spare a preflight.
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
    "Access-Control-Max-Age": "86400",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpError(Exception):
    """A request the endpoint refuses as a whole, answered with a Segment-style JSON error."""

    def __init__(
        self, status: int, code: str, message: str, errors: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors or []

    def response(self) -> web.Response:
        """The JSON answer."""
        body: dict[str, Any] = {"success": False, "code": self.code, "message": self.message}
        if self.errors:
            body["errors"] = self.errors
        headers = {"WWW-Authenticate": 'Basic realm="omni"'} if self.status == 401 else None
        return web.json_response(body, status=self.status, headers=headers)


class HttpEndpoint:
    """The tracking endpoint's routes and server; start() binds, stop() drains in-flight requests."""

    def __init__(
        self,
        intake: Intake,
        write_keys: Mapping[str, Source],
        lookup: IdentifierLookup,
        *,
        host: str,
        port: int,
        shutdown_grace_s: float,
    ) -> None:
        self._intake = intake
        self._lookup = lookup
        self._write_keys = dict(write_keys)
        self._host = host
        self._port = port
        self._grace_s = shutdown_grace_s
        self._runner: web.AppRunner | None = None

    def application(self) -> web.Application:
        """The aiohttp application with every route."""
        app = web.Application(middlewares=[_json_errors])
        for path, kind in ROUTES.items():
            app.router.add_post(f"/v1/{path}", self._handler(kind))
            app.router.add_route("OPTIONS", f"/v1/{path}", _preflight)
        return app

    async def start(self) -> None:
        """Bind and serve; with port 0 a free port is chosen (see `port`)."""
        self._runner = web.AppRunner(self.application(), access_log=None, shutdown_timeout=self._grace_s)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        self._port = int(self._runner.addresses[0][1])
        log.info("profile tracking endpoint on http://%s:%d", self._host, self._port)

    @property
    def port(self) -> int:
        """The port the endpoint listens on."""
        return self._port

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish within the grace period, close."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _handler(self, kind: str | None) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._handle(request, kind)

        return handle

    async def _handle(self, request: web.Request, kind: str | None) -> web.Response:
        received_at = datetime.now(UTC)
        header_key = write_key_of(request.headers.get("Authorization"))
        if header_key is not None:
            self._source(header_key)
        payload = parse_body(await read_body(request))
        source = self._source(header_key if header_key is not None else payload.get("writeKey"))
        messages, batch_sent_at = _messages(payload, kind)
        outcome = Outcome()
        # Identity is asked twice on the way, for an alias call's previousId and to resolve the events; it
        # being down is a 503 the libraries retry either way, never a refused message.
        try:
            pending, message_ids, origins = await self._translate(
                messages, kind, source, received_at, batch_sent_at, outcome
            )
            await self._intake.ingest(pending, outcome)
        except (Unavailable, Aborted) as error:
            raise HttpError(503, "unavailable", f"{error.message}; retry later") from error
        errors = [
            _error_json(r, message_ids, origins) for r in sorted(outcome.rejections, key=lambda r: r.position)
        ]
        if kind is not None and outcome.rejected:
            raise HttpError(400, "invalid_request", errors[0]["message"], errors)
        if kind is None and outcome.rejected and not (outcome.accepted or outcome.duplicates):
            summary = errors[0]["message"]
            if len(messages) > 1:
                summary = f"none of the {len(messages)} messages could be recorded; the first: {summary}"
            raise HttpError(400, "invalid_request", summary, errors)
        if kind is not None:
            return web.json_response({"success": True})
        return web.json_response(
            {
                "success": True,
                "accepted": outcome.accepted,
                "duplicates": outcome.duplicates,
                "rejected": outcome.rejected,
                "errors": errors,
            }
        )

    async def _translate(
        self,
        messages: list[Any],
        kind: str | None,
        source: Source,
        received_at: datetime,
        batch_sent_at: datetime | None,
        outcome: Outcome,
    ) -> tuple[list[Pending], dict[int, str], dict[int, list[str]]]:
        """The messages as checked events, refused ones counted in outcome; with, by position, each message's
        id and the message fields its event's identifiers came from."""
        pending: list[Pending] = []
        message_ids: dict[int, str] = {}
        origins: dict[int, list[str]] = {}
        for index, message in enumerate(messages):
            translated = segment.translate(
                message,
                source=source,
                received_at=received_at,
                batch_sent_at=batch_sent_at,
                expected_type=kind,
                previous_id_type=await self._previous_id_type(message, kind),
            )
            if isinstance(translated, segment.Refused):
                message_ids[index] = translated.message_id
                outcome.reject(
                    Rejection(index, translated.message_id, translated.message, tuple(translated.violations))
                )
                continue
            message_ids[index] = translated.event.id
            origins[index] = translated.origins
            pending.append(
                Pending(
                    index,
                    wire.event_from_proto(translated.event, received_at=received_at, derived_time=True),
                    traits=translated.traits,
                )
            )
        return pending, message_ids, origins

    async def _previous_id_type(self, message: Any, kind: str | None) -> str | None:
        """For an alias call: whether its previousId is a known cookie (anonymous_id) or a user id."""
        previous = segment.previous_id(message, kind)
        if previous is None:
            return None
        guessed = segment.guess_previous_id_type(message)
        if guessed == "anonymous_id":
            return guessed
        # Server libraries send previousId alone; identity knows whether it is a cookie seen before.
        return "anonymous_id" if await self._lookup.held("anonymous_id", previous) else "user_id"

    def _source(self, write_key: Any) -> Source:
        if write_key is None or write_key == "":
            raise HttpError(
                401,
                "unauthorized",
                "a write key is required: HTTP Basic authentication with the write key as user name, "
                "or writeKey in the body",
            )
        source = self._write_keys.get(write_key) if isinstance(write_key, str) else None
        if source is None:
            raise HttpError(401, "unauthorized", "unknown write key")
        return source


def write_key_of(header: str | None) -> str | None:
    """The write key of an Authorization header (Basic, key as user name); None without a header."""
    if not header:
        return None
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "basic":
        raise HttpError(401, "unauthorized", "use HTTP Basic authentication with the write key as user name")
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as error:
        raise HttpError(401, "unauthorized", "malformed Basic credentials") from error
    return decoded.partition(":")[0]


async def read_body(request: web.Request) -> bytes:
    """The (decompressed) body, refused with 413 once it passes MAX_BODY_BYTES."""
    too_large = HttpError(413, "request_too_large", f"the body must be at most {MAX_BODY_BYTES // 1024} KB")
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise too_large
    parts: list[bytes] = []
    size = 0
    async for part in request.content.iter_any():
        size += len(part)
        if size > MAX_BODY_BYTES:
            raise too_large
        parts.append(part)
    return b"".join(parts)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_body(body: bytes) -> dict[str, Any]:
    """The JSON object of a body; 400 if it is not one."""
    if not body.strip():
        raise HttpError(400, "invalid_request", "the body is empty; it must be a JSON object")
    try:
        payload = json.loads(body, parse_constant=_no_constants)
    except (ValueError, RecursionError) as error:
        raise HttpError(400, "invalid_json", f"the body is not valid JSON: {error}") from error
    if not isinstance(payload, dict):
        raise HttpError(400, "invalid_request", "the body must be a JSON object")
    return payload


def _messages(payload: dict[str, Any], kind: str | None) -> tuple[list[Any], datetime | None]:
    if kind is not None:
        return [payload], None
    batch = payload.get("batch")
    if not isinstance(batch, list) or not batch:
        raise HttpError(400, "invalid_request", "batch must be a non-empty array of messages")
    violations = Violations()
    sent_at = segment.parse_time(payload.get("sentAt"), "sentAt", violations)
    if violations:
        raise HttpError(400, "invalid_request", f"sentAt: {violations.items[0].description}")
    shared = payload.get("context")
    if shared is None:
        return batch, sent_at
    if not isinstance(shared, dict):
        raise HttpError(400, "invalid_request", "context: must be a JSON object")
    # The batch's context applies to every message; a message's own context keys win.
    return [_with_context(m, shared) for m in batch], sent_at


def _with_context(message: Any, shared: dict[str, Any]) -> Any:
    if not isinstance(message, dict):
        return message
    own = message.get("context")
    if own is None:
        return {**message, "context": shared}
    return {**message, "context": {**shared, **own}} if isinstance(own, dict) else message


def _error_json(
    rejection: Rejection, message_ids: Mapping[int, str], origins: Mapping[int, list[str]]
) -> dict[str, Any]:
    violations: list[FieldViolation] = list(rejection.violations)
    if rejection.position in origins:
        # Refused after translation (by identity or the profile): paths are the event's, not the message's.
        violations = [segment.message_field(v, origins[rejection.position]) for v in violations]
    described = "; ".join(f"{v.field}: {v.description}" if v.field else v.description for v in violations)
    return {
        "index": rejection.position,
        "messageId": message_ids.get(rejection.position, ""),
        "message": described or rejection.message,
        "reason": rejection.reason,
        "fields": [{"field": v.field, "description": v.description} for v in violations],
    }


async def _preflight(request: web.Request) -> web.Response:
    return web.Response(status=204, headers=_CORS)


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every answer carries the CORS headers; every error is JSON in the Segment style."""
    try:
        response = await handler(request)
    except HttpError as error:
        response = error.response()
    except web.HTTPException as error:
        response = web.json_response(
            {"success": False, "code": error.reason.lower().replace(" ", "_"), "message": error.reason},
            status=error.status,
        )
    except Exception:
        log.exception("tracking endpoint failed on %s", request.path)
        response = web.json_response(
            {"success": False, "code": "internal", "message": "internal error"}, status=500
        )
    response.headers.update(_CORS)
    return response
