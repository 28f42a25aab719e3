"""Reading a request to the tracking endpoint: its write key, its body (size, compression, time) and its JSON.

Each problem is an HttpError with the Segment-style answer: 400 for a body that is not a JSON object or not
valid gzip, 401 for malformed credentials, 408 for a body that does not arrive in time (the connection is
then closed), 413 for a body over MAX_BODY_BYTES once decompressed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import zlib
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

MAX_BODY_BYTES = 500 * 1024
"""The largest request body Segment accepts (after decompression)."""

LINGERING_S = 2.0
"""After an answer given before the whole body arrived (408, 413), how long the rest is read and ignored before
the connection is closed: long enough for a client still sending to read the answer, short enough that a
stalled one is dropped soon after."""

FLATTENED_DEPTH = 40
"""Objects and arrays nested deeper than this in a body too deep for the JSON parser are read as null: deeper
than any message may nest (a batch's properties begin at level 4, and may hold 32), so the message holding
them is still refused, by its field, and the rest of the batch is not lost."""

# Strings (skipped whole, so brackets inside them do not count) and brackets.
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


class HttpError(Exception):
    """A request the endpoint refuses as a whole, answered with a Segment-style JSON error."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors or []
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        """The JSON answer."""
        body: dict[str, Any] = {"success": False, "code": self.code, "message": self.message}
        if self.errors:
            body["errors"] = self.errors
        headers = dict(self.headers)
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="omni"'
        return web.json_response(body, status=self.status, headers=headers or None)


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


async def read_body(request: web.Request, timeout_s: float) -> bytes:
    """The (decompressed) body: 413 once it passes MAX_BODY_BYTES, 400 when it is not valid gzip or deflate,
    408 when it has not all arrived within timeout_s (and the connection is closed, not kept waiting)."""
    too_large = HttpError(413, "request_too_large", f"the body must be at most {MAX_BODY_BYTES // 1024} KB")
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise too_large
    parts: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for part in request.content.iter_any():
                size += len(part)
                if size > MAX_BODY_BYTES:
                    raise too_large
                parts.append(part)
    except TimeoutError as error:
        # Answered, then the connection is closed once aiohttp's lingering (LINGERING_S) has passed.
        raise HttpError(
            408,
            "request_timeout",
            f"the body did not arrive within {timeout_s:g} seconds",
            headers={"Connection": "close"},
        ) from error
    except (web.RequestPayloadError, HttpProcessingError, zlib.error) as error:
        # aiohttp decompresses as it reads: a body that is not what its Content-Encoding says fails here.
        encoding = request.headers.get("Content-Encoding")
        what = f"decompressed as {encoding}" if encoding else "read"
        raise HttpError(400, "invalid_body", f"the body could not be {what}") from error
    return b"".join(parts)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_body(body: bytes) -> dict[str, Any]:
    """The JSON object of a body; 400 if it is not one."""
    if not body.strip():
        raise HttpError(400, "invalid_request", "the body is empty; it must be a JSON object")
    try:
        try:
            payload = json.loads(body, parse_constant=_no_constants)
        except RecursionError:
            payload = json.loads(flattened(body, FLATTENED_DEPTH), parse_constant=_no_constants)
    except (ValueError, RecursionError) as error:
        raise HttpError(400, "invalid_json", f"the body is not valid JSON: {error}") from error
    if not isinstance(payload, dict):
        raise HttpError(400, "invalid_request", "the body must be a JSON object")
    return payload


def flattened(body: bytes, depth: int) -> bytes:
    """The body with every object or array nested deeper than depth replaced by null, without recursion.

    Unbalanced brackets are left for the parser to refuse.
    """
    pieces: list[bytes] = []
    level = 0
    kept_from = 0
    cut_at: int | None = None
    for token in _TOKENS.finditer(body):
        bracket = token.group()
        if bracket[:1] == b'"':
            continue
        if bracket in (b"[", b"{"):
            level += 1
            if level == depth + 1 and cut_at is None:
                cut_at = token.start()
        else:
            if level == depth + 1 and cut_at is not None:
                pieces.append(body[kept_from:cut_at])
                pieces.append(b"null")
                kept_from = token.end()
                cut_at = None
            level -= 1
            if level < 0:
                return body
    pieces.append(body[kept_from:])
    return b"".join(pieces)
