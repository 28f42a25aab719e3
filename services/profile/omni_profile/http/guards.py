"""What the tracking endpoint tells browsers (CORS), and how it holds off write-key guessing.

Browsers: analytics.js posts from the shop's pages, another origin. A request whose Origin is allowed is
answered with that origin and `Access-Control-Allow-Credentials: true` (never `*`: `navigator.sendBeacon` with
an `application/json` Blob sends credentials, and a credentialed request is refused by the browser when the
answer says `*`). A preflight is allowed the headers it asks for (analytics.js sends `X-Retry-Count` on every
retry), so a retry after a 503 is not blocked. An Origin that is not allowed gets 403 and no CORS headers.
Requests without an Origin (server libraries) are not concerned.

Guessing: failed write-key attempts (a 401) are counted per client address; after `limit` of them within
`window_s` seconds the address is answered 429 (with Retry-After) until the oldest of them leaves the window,
whatever key it sends. Behind a load balancer the address is the balancer's: every client behind it shares it.
"""

from __future__ import annotations

import math
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence

ANY_ORIGIN = "*"
DEFAULT_ALLOWED_HEADERS = "Authorization, Content-Type, X-Retry-Count"
_MAX_AGE_S = 86400
# A header list as a browser sends it in Access-Control-Request-Headers: tokens separated by commas.
_HEADER_LIST = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+(?:[ \t]*,[ \t]*[!#$%&'*+.^_`|~0-9A-Za-z-]+)*")
_MAX_HEADER_LIST = 1024


class CorsPolicy:
    """Which origins may post from a browser, and the CORS headers of the answer to them."""

    def __init__(self, allowed_origins: Sequence[str]) -> None:
        self._any = ANY_ORIGIN in allowed_origins
        self._allowed = frozenset(origin.rstrip("/").lower() for origin in allowed_origins)

    def allows(self, origin: str) -> bool:
        """Whether a browser page of this origin may post events."""
        return self._any or origin.rstrip("/").lower() in self._allowed

    def headers(self, origin: str | None) -> dict[str, str]:
        """The CORS headers of an answer to a request from origin (none without an Origin, or for one that is
        not allowed)."""
        if not origin or not self.allows(origin):
            return {}
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Credentials": "true",
            "Vary": "Origin",
        }

    def preflight_headers(self, origin: str | None, requested: str | None) -> dict[str, str]:
        """The headers of the answer to a preflight (OPTIONS) from origin asking for the `requested` headers."""
        headers = self.headers(origin)
        if not headers:
            return {}
        wanted = (requested or "").strip()
        allowed = (
            wanted
            if wanted and len(wanted) <= _MAX_HEADER_LIST and _HEADER_LIST.fullmatch(wanted)
            else DEFAULT_ALLOWED_HEADERS
        )
        return {
            **headers,
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": allowed,
            "Access-Control-Max-Age": str(_MAX_AGE_S),
            "Vary": "Origin, Access-Control-Request-Headers",
        }


class WriteKeyThrottle:
    """Counts failed write-key attempts per client address and says when an address must wait.

    At most max_addresses are remembered (the least recently failing are forgotten first), so a flood from
    many addresses cannot grow it without bound.
    """

    def __init__(
        self,
        limit: int,
        window_s: float,
        *,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = limit
        self._window_s = window_s
        self._max_addresses = max_addresses
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, address: str) -> int | None:
        """Whole seconds the address must wait before it may try again, or None when it may now."""
        failures = self._recent(address)
        if failures is None or len(failures) < self._limit:
            return None
        return max(1, math.ceil(failures[0] + self._window_s - self._clock()))

    def failed(self, address: str) -> None:
        """Count one failed attempt from the address."""
        failures = self._recent(address)
        if failures is None:
            failures = self._failures[address] = deque(maxlen=self._limit)
            while len(self._failures) > self._max_addresses:
                self._failures.popitem(last=False)
        failures.append(self._clock())
        self._failures.move_to_end(address)

    def __len__(self) -> int:
        """How many addresses are remembered."""
        return len(self._failures)

    def _recent(self, address: str) -> deque[float] | None:
        failures = self._failures.get(address)
        if failures is None:
            return None
        horizon = self._clock() - self._window_s
        while failures and failures[0] <= horizon:
            failures.popleft()
        if not failures:
            del self._failures[address]
            return None
        return failures


def origin_of(headers: Mapping[str, str]) -> str | None:
    """The request's Origin header; None when absent or "null" (a sandboxed page, a file)."""
    origin = headers.get("Origin")
    return origin if origin and origin != "null" else None
