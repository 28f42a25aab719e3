"""The signed links of an email: one-click unsubscribe (RFC 8058), the open pixel, click redirects, and the
VERP return path its bounces come back to.

Link tokens are itsdangerous `URLSafeSerializer` tokens (HMAC-SHA256 over the compact JSON claims, each kind of
link with its own salt, so an open token is no unsubscribe token). The claims name the message, the person,
the channel and purpose, when the token was issued and when it expires, and for a click the target URL: what a
link does is inside its signature, so a tampered token is refused and the redirect can only go where the email
said. Several secrets may be given (the last signs, all verify), so a secret can be rotated without breaking
the links of emails already sent.

The return path is `bounces+<message id hex>.<tag>@<bounce domain>`: the tag is 80 bits of HMAC-SHA256 of the
message id in lower-case base32, because mail servers may change the case of a local part and a local part is
at most 64 characters (this one is 57). It does not expire: bounces come days later.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from html import escape
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit

from itsdangerous import BadSignature, URLSafeSerializer

from omni_gateway.domain import Channel, Purpose

__all__ = [
    "BOUNCE_LOCAL_PREFIX",
    "MAX_TRACKED_URL",
    "EmailLinks",
    "LinkClaims",
    "LinkKind",
    "TokenExpired",
    "TokenInvalid",
    "track_html",
]

BOUNCE_LOCAL_PREFIX = "bounces+"
MAX_TRACKED_URL = 2048
"""Longer URLs in an HTML body are left as they are (not tracked): a token carries its URL."""

_BOUNCE_TAG_BYTES = 10
_SALT = "omni.gateway.email."


class LinkKind(StrEnum):
    """What a link token is for; each kind signs with its own salt."""

    UNSUBSCRIBE = "unsubscribe"
    OPEN = "open"
    CLICK = "click"


@dataclass(frozen=True)
class LinkClaims:
    """What a link token says. `url` only for clicks."""

    message_id: uuid.UUID
    person_id: uuid.UUID
    channel: Channel
    purpose: Purpose
    issued_at: int
    """Unix seconds when the email was built (each attempt builds it anew, so about when it was sent)."""
    expires_at: int
    url: str = ""

    def to_wire(self) -> list[Any]:
        return [
            self.message_id.hex,
            self.person_id.hex,
            self.channel.value,
            self.purpose.value,
            self.issued_at,
            self.expires_at,
            *([self.url] if self.url else []),
        ]

    @classmethod
    def from_wire(cls, value: Any) -> LinkClaims:
        if not isinstance(value, list) or len(value) not in (6, 7):
            raise TokenInvalid("malformed claims")
        try:
            return cls(
                message_id=uuid.UUID(hex=value[0]),
                person_id=uuid.UUID(hex=value[1]),
                channel=Channel(value[2]),
                purpose=Purpose(value[3]),
                issued_at=int(value[4]),
                expires_at=int(value[5]),
                url=str(value[6]) if len(value) == 7 else "",
            )
        except (TypeError, ValueError) as error:
            raise TokenInvalid(f"malformed claims: {error}") from error


class TokenInvalid(Exception):
    """The token is not one this gateway signed for this kind of link (forged, tampered, truncated)."""


class TokenExpired(Exception):
    """The token is authentic but past its expiry; `claims` says what it was for."""

    def __init__(self, claims: LinkClaims) -> None:
        super().__init__(f"token of message {claims.message_id} expired")
        self.claims = claims


class EmailLinks:
    """Issues and checks the email's link tokens and builds its URLs and return path."""

    def __init__(
        self,
        *,
        secrets: Sequence[str],
        public_url: str,
        bounce_domain: str,
        ttl_s: float,
        unsubscribe_mailto: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`secrets`: oldest first, the last one signs. `public_url`: where the gateway's HTTP endpoint is
        reached from the internet (https://mail.example.com), links are `<public_url>/u/<token>` etc."""
        if not secrets or not all(secrets):
            raise ValueError("at least one non-empty token secret is needed")
        self._secrets = [s.encode() for s in secrets]
        self._serializers = {
            kind: URLSafeSerializer(
                list(secrets), salt=_SALT + kind.value, signer_kwargs={"digest_method": hashlib.sha256}
            )
            for kind in LinkKind
        }
        # Issuing writes the serializers' tokens itself, byte for byte (checked by the tests), with each
        # kind's signing key derived once rather than for every token (itsdangerous's django-concat
        # derivation with the last secret); verifying is itsdangerous's.
        self._macs = {
            kind: hmac.new(
                hashlib.sha256((_SALT + kind.value).encode() + b"signer" + self._secrets[-1]).digest(),
                digestmod=hashlib.sha256,
            )
            for kind in LinkKind
        }
        self.public_url = public_url.rstrip("/")
        self.bounce_domain = bounce_domain
        self.ttl_s = ttl_s
        self.unsubscribe_mailto = unsubscribe_mailto
        self._clock = clock

    # Tokens

    def claims(
        self, message_id: uuid.UUID, person_id: uuid.UUID, purpose: Purpose, *, url: str = ""
    ) -> LinkClaims:
        """Claims issued now, expiring after the configured lifetime."""
        now = int(self._clock())
        return LinkClaims(message_id, person_id, Channel.EMAIL, purpose, now, now + int(self.ttl_s), url)

    def issue(self, kind: LinkKind, claims: LinkClaims) -> str:
        """The signed token for claims."""
        return self._signed(kind, _compact_json(claims.to_wire()))

    def _signed(self, kind: LinkKind, payload: bytes) -> str:
        # itsdangerous's URLSafeSerializer.dumps: zlib when it is shorter, base64url, then the HMAC.
        compressed = zlib.compress(payload)
        body = b"." + _b64(compressed) if len(compressed) < len(payload) - 1 else _b64(payload)
        mac = self._macs[kind].copy()
        mac.update(body)
        return (body + b"." + _b64(mac.digest())).decode("ascii")

    def verify(self, kind: LinkKind, token: str) -> LinkClaims:
        """The claims of an authentic token of this kind; TokenInvalid or TokenExpired otherwise."""
        try:
            raw = self._serializers[kind].loads(token)
        except BadSignature as error:
            raise TokenInvalid(str(error)) from error
        claims = LinkClaims.from_wire(raw)
        if claims.expires_at < self._clock():
            raise TokenExpired(claims)
        return claims

    # URLs

    def unsubscribe_url(self, claims: LinkClaims) -> str:
        return f"{self.public_url}/u/{self.issue(LinkKind.UNSUBSCRIBE, claims)}"

    def open_url(self, claims: LinkClaims) -> str:
        return f"{self.public_url}/o/{self.issue(LinkKind.OPEN, claims)}.gif"

    def click_url(self, claims: LinkClaims, target: str) -> str:
        return f"{self.public_url}/c/{self.issue(LinkKind.CLICK, replace(claims, url=target))}"

    def click_urls(self, claims: LinkClaims, targets: Sequence[str]) -> list[str]:
        """`click_url` for each target, the claims common to them serialised once."""
        prefix = _compact_json(claims.to_wire()[:6])[:-1] + b","
        return [
            f"{self.public_url}/c/{self._signed(LinkKind.CLICK, prefix + _compact_json(target) + b']')}"
            for target in targets
        ]

    def list_unsubscribe(self, claims: LinkClaims) -> str:
        """The List-Unsubscribe value: the one-click HTTPS URL first, then the mailto if configured."""
        value = f"<{self.unsubscribe_url(claims)}>"
        if self.unsubscribe_mailto:
            value += f", <mailto:{self.unsubscribe_mailto}?subject=unsubscribe>"
        return value

    # Bounces (VERP)

    def return_path(self, message_id: uuid.UUID) -> str:
        """The envelope sender (MAIL FROM) of the message: bounces to it name the message."""
        return f"{BOUNCE_LOCAL_PREFIX}{message_id.hex}.{self._bounce_tag(message_id, self._secrets[-1])}@{self.bounce_domain}"

    def message_of_return_path(self, address: str) -> uuid.UUID | None:
        """The message a bounce address names, if it is one this gateway made (any case); else None."""
        local, at, _ = address.strip().strip("<>").rpartition("@")
        local = local.lower()
        if not at or not local.startswith(BOUNCE_LOCAL_PREFIX):
            return None
        message_hex, dot, tag = local[len(BOUNCE_LOCAL_PREFIX) :].partition(".")
        try:
            message_id = uuid.UUID(hex=message_hex) if dot and len(message_hex) == 32 else None
        except ValueError:
            return None
        if message_id is None:
            return None
        for secret in self._secrets:
            if hmac.compare_digest(tag, self._bounce_tag(message_id, secret)):
                return message_id
        return None

    @staticmethod
    def _bounce_tag(message_id: uuid.UUID, secret: bytes) -> str:
        digest = hmac.new(secret, b"omni.gateway.bounce\0" + message_id.bytes, hashlib.sha256).digest()
        return base64.b32encode(digest[:_BOUNCE_TAG_BYTES]).decode().lower()


def _compact_json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def track_html(html: str, *, links: EmailLinks, claims: LinkClaims) -> str:
    """The HTML body with every http(s) link of an `<a href>` going through the click redirect and the open
    pixel added before `</body>` (or at the end).

    Parsed with the standard library's HTMLParser, and only the start tags of the rewritten links are replaced
    (everything else is kept byte for byte). Left as they are: mailto:, tel:, anchors, relative and non-http
    URLs, links longer than MAX_TRACKED_URL, links carrying `data-omni-no-track`, and the unsubscribe link
    (a `/u/` URL of this gateway), which must work without a detour.
    """
    found, body_end = _scan(html, links.public_url)
    pieces: list[str] = []
    cursor = 0
    hrefs = [next(value for name, value in attrs if name == "href") or "" for _, _, attrs in found]
    urls = iter(links.click_urls(claims, hrefs))
    for start, raw, attrs in found:
        url = next(urls)
        # The first href is the link's (HTMLParser keeps every attribute; a repeated href is rewritten too).
        rewritten = [(name, url if name == "href" and value is not None else value) for name, value in attrs]
        pieces += [html[cursor:start], _start_tag("a", rewritten)]
        cursor = start + len(raw)
    pixel = (
        f'<img src="{escape(links.open_url(claims))}" width="1" height="1" alt="" '
        'style="display:block;width:1px;height:1px;border:0" />'
    )
    if body_end is not None:
        end = body_end
        if end >= cursor:
            pieces += [html[cursor:end], pixel]
            cursor = end
            pixel = ""
    pieces.append(html[cursor:])
    pieces.append(pixel)
    return "".join(pieces)


_Found = list[tuple[int, str, list[tuple[str, str | None]]]]
"""The links to rewrite: where each start tag begins, its text, its attributes."""

# Markup after which HTMLParser reads text differently (comments, CDATA sections, processing instructions,
# script and style contents): an HTML with none of it can have its `<a` tags looked at alone.
_NOT_PLAIN = re.compile(r"<!--|<!\[|<\?|<script|<style", re.IGNORECASE)
_A_TAG = re.compile(r"<a[\s/>]", re.IGNORECASE)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)


def _scan(html: str, public_url: str) -> tuple[_Found, int | None]:
    """The trackable links of the HTML and where its last `</body>` is. A plain HTML (see _NOT_PLAIN) has only
    its `<a` tags parsed, by HTMLParser's own start-tag parser (a tenth of the time of feeding it the whole
    document, the same tags and attributes); any other is fed to HTMLParser whole."""
    finder = _LinkFinder(public_url)
    if _NOT_PLAIN.search(html) is None:
        finder.rawdata = html
        try:
            for match in _A_TAG.finditer(html):
                finder.at = match.start()
                finder.parse_starttag(match.start())
        except AssertionError:  # HTMLParser's "should not get here" on markup it cannot read alone
            return _scan(html + "<!---->", public_url)
        body_ends = [m.start() for m in _BODY_END.finditer(html)]
        return [(at, raw, attrs) for (at, _), raw, attrs in finder.links], (
            body_ends[-1] if body_ends else None
        )
    finder.feed(html)
    finder.close()
    offsets = _line_offsets(html)
    found: _Found = []
    for (line, column), raw, attrs in finder.links:
        start = offsets[line - 1] + column
        if html[start : start + len(raw)] != raw:
            continue  # the parser's idea of the position is off (should not happen): leave the tag alone
        found.append((start, raw, attrs))
    body_end = None
    if finder.body_end is not None:
        body_end = offsets[finder.body_end[0] - 1] + finder.body_end[1]
    return found, body_end


class _LinkFinder(HTMLParser):
    def __init__(self, public_url: str) -> None:
        super().__init__(convert_charrefs=True)
        self._unsubscribe_prefix = f"{public_url}/u/"
        self.links: list[tuple[tuple[int, int], str, list[tuple[str, str | None]]]] = []
        self.body_end: tuple[int, int] | None = None
        self.at: int | None = None
        """Where the start tag being parsed begins, when its tags are parsed one by one (`_scan`)."""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "a":
            return
        names = {name for name, _ in attrs}
        href = next((value for name, value in attrs if name == "href"), None)
        raw = self.get_starttag_text()
        if href is None or raw is None or "data-omni-no-track" in names or not _trackable(href):
            return
        if href.startswith(self._unsubscribe_prefix):
            return
        self.links.append(((self.at, 0) if self.at is not None else self.getpos(), raw, attrs))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag == "body":
            self.body_end = self.getpos()


def _trackable(href: str) -> bool:
    href = href.strip()
    if len(href) > MAX_TRACKED_URL or any(c in href for c in "\r\n\t"):
        return False
    parts = urlsplit(href)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _start_tag(tag: str, attrs: list[tuple[str, str | None]]) -> str:
    rendered = "".join(
        f' {name}="{escape(value)}"' if value is not None else f" {name}" for name, value in attrs
    )
    return f"<{tag}{rendered}>"


def _line_offsets(text: str) -> list[int]:
    # HTMLParser counts lines by "\n" only; offsets[n] is where line n+1 starts.
    offsets = [0]
    index = text.find("\n")
    while index != -1:
        offsets.append(index + 1)
        index = text.find("\n", index + 1)
    return offsets
