"""The Segment-compatible tracking endpoint: an aiohttp server next to gRPC in the profile process.

Routes follow the Segment Tracking API (POST /v1/identify, /v1/track, /v1/page, /v1/screen, /v1/group,
/v1/alias, /v1/batch and /v1/import), plus the one-letter paths analytics.js posts to (/v1/i, /v1/t …,
/v1/b). The write key comes from HTTP Basic authentication (the key as user name, no password) or from
writeKey in the body. Answers are JSON: 200 {"success": true} (with "warnings" naming what was left out of a
recorded message: a bad trait, the largest parts of an oversized context); 400 for a malformed body or
message; 401 for a missing or unknown write key; 403 for a browser page of an origin not allowed; 408 for a
body that does not arrive in time; 413 for a body over 500 KB; 429 for an address that failed too many write
keys lately; 503 with Retry-After when identity or profile's database is unavailable or the batch kept
conflicting with concurrent writes (the libraries retry; nothing of the request was recorded). In a batch, refused messages are listed with their reasons and the others are recorded.
Connections that do not send a request's headers within the idle timeout are closed (guards.py and
requests.py say more).
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from omni_kit.db import database_unavailable
from omni_kit.errors import Aborted, FieldViolation, Unavailable, Violations
from omni_kit.ratelimit import RateLimits, retry_after_header
from omni_profile import wire
from omni_profile.http import identifiers, message_traits, segment
from omni_profile.http.guards import ANY_ORIGIN, CorsPolicy, WriteKeyThrottle, origin_of
from omni_profile.http.intake import Intake, Outcome, Pending, Rejection
from omni_profile.http.json_sizes import dropped
from omni_profile.http.lookup import IdentifierLookup
from omni_profile.http.requests import LINGERING_S, HttpError, parse_body, read_body, write_key_of
from omni_profile.http.sources import Source, WriteKeys

log = logging.getLogger(__name__)

# Path → message type; None is a batch.
ROUTES: dict[str, str | None] = {
    **{kind: kind for kind in segment.MESSAGE_TYPES},
    **{kind[0]: kind for kind in segment.MESSAGE_TYPES},
    "batch": None,
    "import": None,
    "b": None,
}

_IDENTIFIER_PATH = re.compile(r"identifiers\[(\d+)\]\.\w+")
_TRAIT_ORIGINS = tuple(f"{prefix}." for prefix in message_traits.TRAIT_SOURCES)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

RETRY_AFTER_S = 5
"""What a 503 tells clients to wait (Retry-After) before sending the request again."""


@dataclass(frozen=True)
class EndpointLimits:
    """How the endpoint treats browsers, slow clients and failed write keys (see the settings in main)."""

    allowed_origins: tuple[str, ...] = (ANY_ORIGIN,)
    idle_timeout_s: float = 15.0
    body_timeout_s: float = 30.0
    write_key_failures: int = 20
    write_key_failure_window_s: float = 60.0
    rate_per_s: float | None = None
    rate_burst: float | None = None


@dataclass
class _Translated:
    """What the messages of a request became, by position."""

    pending: list[Pending]
    message_ids: dict[int, str]
    events: dict[int, segment.Translated]


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
        limits: EndpointLimits | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._intake = intake
        self._ssl_context = ssl_context
        self._lookup = lookup
        self._write_keys = WriteKeys(write_keys)
        self._host = host
        self._port = port
        self._grace_s = shutdown_grace_s
        self._limits = limits or EndpointLimits()
        self._cors = CorsPolicy(self._limits.allowed_origins)
        self._throttle = WriteKeyThrottle(
            self._limits.write_key_failures, self._limits.write_key_failure_window_s
        )
        self._rates = (
            None
            if self._limits.rate_per_s is None
            else RateLimits(self._limits.rate_per_s, self._limits.rate_burst)
        )
        self._runner: web.AppRunner | None = None

    def application(self) -> web.Application:
        """The aiohttp application with every route."""
        app = web.Application(middlewares=[self._json_errors])
        for path, kind in ROUTES.items():
            app.router.add_post(f"/v1/{path}", self._handler(kind))
            app.router.add_route("OPTIONS", f"/v1/{path}", self._preflight)
        return app

    async def start(self) -> None:
        """Bind and serve; with port 0 a free port is chosen (see `port`)."""
        self._runner = web.AppRunner(
            self.application(),
            access_log=None,
            shutdown_timeout=self._grace_s,
            # aiohttp closes a connection that has not sent a whole request's headers this long after it
            # opened or after its last answer: stalled and idle clients do not hold it for ever.
            keepalive_timeout=self._limits.idle_timeout_s,
            lingering_time=LINGERING_S,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, ssl_context=self._ssl_context)
        await site.start()
        self._port = int(self._runner.addresses[0][1])
        scheme = "http" if self._ssl_context is None else "https"
        log.info("profile tracking endpoint on %s://%s:%d", scheme, self._host, self._port)

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
        origin = origin_of(request.headers)
        if origin is not None and not self._cors.allows(origin):
            raise HttpError(403, "forbidden_origin", f"pages of {origin} may not send events here")
        address = request.remote or "unknown"
        wait_s = self._throttle.retry_after(address)
        if wait_s is not None:
            raise HttpError(
                429,
                "too_many_requests",
                f"too many failed write keys from {address}; retry in {wait_s} s",
                headers={"Retry-After": str(wait_s)},
            )
        try:
            header_key = write_key_of(request.headers.get("Authorization"))
            if header_key is not None:
                self._source(header_key)
            payload = parse_body(await read_body(request, self._limits.body_timeout_s))
            source = self._source(header_key if header_key is not None else payload.get("writeKey"))
        except HttpError as error:
            if error.status == 401:
                self._throttle.failed(address)
            raise
        wait = None if self._rates is None else self._rates.wait_for(source.name)
        if wait is not None:
            raise HttpError(
                429,
                "too_many_requests",
                f"source {source.name} is over its rate limit; retry in {wait:.3f} s",
                headers={"Retry-After": retry_after_header(wait)},
            )
        messages, batch_sent_at = _messages(payload, kind)
        outcome = Outcome()
        # Identity is asked twice on the way, for an alias call's previousId and to resolve the events; it
        # being down is a 503 the libraries retry either way, never a refused message.
        try:
            translated = await self._translate(messages, kind, source, received_at, batch_sent_at, outcome)
            await self._intake.ingest(translated.pending, outcome)
            await self._again_without_trait_identifiers(translated, outcome, received_at)
        except (Unavailable, Aborted) as error:
            raise _unavailable(f"{error.message}; retry later") from error
        rejected = {r.position for r in outcome.rejections}
        errors = [_error_json(r, translated) for r in sorted(outcome.rejections, key=lambda r: r.position)]
        warnings = [
            _warning_json(position, message)
            for position, message in sorted(translated.events.items())
            if message.warnings and position not in rejected
        ]
        if kind is not None and outcome.rejected:
            raise HttpError(400, "invalid_request", errors[0]["message"], errors)
        if kind is None and outcome.rejected and not (outcome.accepted or outcome.duplicates):
            summary = errors[0]["message"]
            if len(messages) > 1:
                summary = f"none of the {len(messages)} messages could be recorded; the first: {summary}"
            raise HttpError(400, "invalid_request", summary, errors)
        if kind is not None:
            return web.json_response(
                {"success": True, "warnings": warnings} if warnings else {"success": True}
            )
        return web.json_response(
            {
                "success": True,
                "accepted": outcome.accepted,
                "duplicates": outcome.duplicates,
                "rejected": outcome.rejected,
                "errors": errors,
                "warnings": warnings,
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
    ) -> _Translated:
        """The messages as checked events, refused ones counted in outcome."""
        result = _Translated([], {}, {})
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
                result.message_ids[index] = translated.message_id
                outcome.reject(
                    Rejection(index, translated.message_id, translated.message, tuple(translated.violations))
                )
                continue
            result.message_ids[index] = translated.event.id
            result.events[index] = translated
            result.pending.append(_pending(index, translated, received_at))
        return result

    async def _again_without_trait_identifiers(
        self, translated: _Translated, outcome: Outcome, received_at: datetime
    ) -> None:
        """Record again, without them, the events identity refused only for an email or phone taken from
        their traits (a phone number it cannot read, say): the trait is left out with a warning, not the
        message. An event with no identifier left stays refused."""
        again: list[Pending] = []
        for rejection in list(outcome.rejections):
            message = translated.events.get(rejection.position)
            if message is None or not rejection.violations:
                continue
            refused = _trait_identifiers(rejection.violations, message.origins)
            if refused is None or len(refused) == len(message.event.identifiers):
                continue
            for index in sorted(refused, reverse=True):
                origin = message.origins.pop(index)
                del message.event.identifiers[index]
                name = origin.rpartition(".")[2]
                message.traits.pop(name, None)
                reason = refused[index]
                message.warnings.append(dropped(origin, reason))
            outcome.rejections.remove(rejection)
            outcome.rejected -= 1
            again.append(_pending(rejection.position, message, received_at))
        if again:
            await self._intake.ingest(again, outcome)

    async def _preflight(self, request: web.Request) -> web.Response:
        origin = origin_of(request.headers)
        if origin is not None and not self._cors.allows(origin):
            raise HttpError(403, "forbidden_origin", f"pages of {origin} may not send events here")
        requested = request.headers.get("Access-Control-Request-Headers")
        return web.Response(status=204, headers=self._cors.preflight_headers(origin, requested))

    @web.middleware
    async def _json_errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every error is JSON in the Segment style; every answer to an allowed origin has its CORS headers."""
        try:
            response = await handler(request)
        except HttpError as error:
            response = error.response()
        except web.HTTPException as error:
            response = web.json_response(
                {"success": False, "code": error.reason.lower().replace(" ", "_"), "message": error.reason},
                status=error.status,
            )
        except Exception as error:
            if database_unavailable(error):
                # Nothing was recorded (the transaction did not commit): the libraries send it again.
                log.warning("tracking endpoint: the database is unavailable (%s); answering 503", error)
                response = _unavailable("the database is unavailable; retry later").response()
            else:
                log.exception("tracking endpoint failed on %s", request.path)
                response = web.json_response(
                    {"success": False, "code": "internal", "message": "internal error"}, status=500
                )
        for name, value in self._cors.headers(origin_of(request.headers)).items():
            response.headers.setdefault(name, value)
        return response

    async def _previous_id_type(self, message: Any, kind: str | None) -> str | None:
        """For an alias call: whether its previousId is a known cookie (anonymous_id) or a user id."""
        previous = identifiers.previous_id(message, kind)
        if previous is None:
            return None
        guessed = identifiers.guess_previous_id_type(message)
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
        source = self._write_keys.source_of(write_key) if isinstance(write_key, str) else None
        if source is None:
            raise HttpError(401, "unauthorized", "unknown write key")
        return source


def _unavailable(message: str) -> HttpError:
    """A 503 the analytics libraries retry, after Retry-After seconds."""
    return HttpError(503, "unavailable", message, headers={"Retry-After": str(RETRY_AFTER_S)})


def _pending(position: int, translated: segment.Translated, received_at: datetime) -> Pending:
    event = wire.event_from_proto(translated.event, received_at=received_at, derived_time=True)
    return Pending(position, event, traits=translated.traits)


def _trait_identifiers(violations: tuple[FieldViolation, ...], origins: list[str]) -> dict[int, str] | None:
    """The identifiers (index → reason) a refusal names when it names only identifiers taken from traits;
    None when it names anything else."""
    refused: dict[int, str] = {}
    for violation in violations:
        match = _IDENTIFIER_PATH.fullmatch(violation.field)
        index = int(match.group(1)) if match else -1
        if not 0 <= index < len(origins) or not origins[index].startswith(_TRAIT_ORIGINS):
            return None
        refused[index] = violation.description
    return refused or None


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


def _error_json(rejection: Rejection, translated: _Translated) -> dict[str, Any]:
    violations: list[FieldViolation] = list(rejection.violations)
    message = translated.events.get(rejection.position)
    if message is not None:
        # Refused after translation (by identity or the profile): paths are the event's, not the message's.
        violations = [message.message_field(v) for v in violations]
    entry = _entry_json(
        rejection.position, translated.message_ids.get(rejection.position, ""), violations, rejection.message
    )
    return {**entry, "reason": rejection.reason}


def _warning_json(position: int, message: segment.Translated) -> dict[str, Any]:
    return _entry_json(position, message.event.id, message.warnings, "")


def _entry_json(
    position: int, message_id: str, violations: list[FieldViolation], message: str
) -> dict[str, Any]:
    described = "; ".join(f"{v.field}: {v.description}" if v.field else v.description for v in violations)
    return {
        "index": position,
        "messageId": message_id,
        "message": described or message,
        "fields": [{"field": v.field, "description": v.description} for v in violations],
    }
