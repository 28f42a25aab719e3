"""Write keys and their sources, and which channel a Segment message came from."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from omni.common.v1 import common_pb2
from omni_profile import wire

_SOURCE_NAME = r"^[a-z][a-z0-9_]{0,31}$"

# context.library.name of the libraries that run in a browser or in a mobile app; any other library
# (analytics-python, analytics-node …) runs on a server, whose channel is the source's.
_BROWSER_LIBRARIES = ("analytics.js", "analytics-next")
_MOBILE_LIBRARIES = (
    "analytics-ios",
    "analytics-android",
    "analytics-swift",
    "analytics-kotlin",
    "analytics-react-native",
    "analytics-flutter",
    "analytics-xamarin",
)
# Segment's own context.channel values.
_SEGMENT_CHANNELS = {"browser": common_pb2.CHANNEL_WEB, "mobile": common_pb2.CHANNEL_APP}


class Source(BaseModel):
    """Where a write key's events come from: the source's name and the channel of its server-side calls."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=_SOURCE_NAME, description="The source, e.g. web; scopes message ids.")
    channel: str | None = Field(
        None,
        description="Channel of calls that do not say theirs (server libraries); defaults to the name "
        "when the name is a channel (web, app, store, call_center …).",
    )

    @field_validator("channel")
    @classmethod
    def _known_channel(cls, value: str | None) -> str | None:
        if value is not None and wire.channel_value(value) == common_pb2.CHANNEL_UNSPECIFIED:
            raise ValueError(f"unknown channel {value!r}")
        return value

    @property
    def default_channel(self) -> common_pb2.Channel.ValueType:
        """The channel of events whose context does not tell."""
        return wire.channel_value(self.channel or self.name)


def _source_of(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


SourceSetting = Annotated[Source, BeforeValidator(_source_of)]
"""A write key's source in settings: a name ("web") or {"name": "pos", "channel": "store"}."""

WriteKey = Annotated[str, Field(min_length=1, max_length=256)]

HASHED = "sha256:"
"""How a write key given by its hash starts: sha256:<64 hex digits>."""


def hash_write_key(key: str) -> str:
    """What to configure for a write key so that only its hash is kept: "sha256:<hex>". Write keys are long
    random strings (new_write_key), so a plain SHA-256 is enough: no dictionary reaches them."""
    return HASHED + hashlib.sha256(key.encode()).hexdigest()


def new_write_key(source: str) -> tuple[str, str]:
    """A new random write key for a source, and its hash for OMNI_PROFILE_WRITE_KEYS."""
    key = f"wk_{source}_{secrets.token_urlsafe(24)}"
    return key, hash_write_key(key)


def check_write_key(configured: str) -> str:
    """A configured write key: a hash must be sha256: and 64 hex digits; anything else is a plain key."""
    if configured.startswith(HASHED):
        digest = configured[len(HASHED) :]
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(
                f"{configured[:16]}…: a hashed write key is sha256: and 64 lower-case hex digits"
            )
    return configured


class WriteKeys:
    """The write keys the endpoint accepts, held only as SHA-256 digests (configured as "sha256:<hex>", or as
    plain keys, hashed at start, for the laptop run), each bound to its source. A presented key is hashed and
    compared with every digest in constant time, so neither the answer's timing nor memory gives a key away.
    Rotation: configure the new key's hash beside the old one (both work), move the senders, drop the old."""

    def __init__(self, configured: Mapping[str, Source]) -> None:
        self._entries: list[tuple[bytes, Source]] = []
        for key, source in configured.items():
            check_write_key(key)
            hashed = key if key.startswith(HASHED) else hash_write_key(key)
            self._entries.append((bytes.fromhex(hashed[len(HASHED) :]), source))

    def __len__(self) -> int:
        return len(self._entries)

    def source_of(self, presented: str) -> Source | None:
        """The source of a presented write key, None when no configured key matches."""
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for stored, source in self._entries:
            # No early exit: every digest is compared whatever matched.
            if hmac.compare_digest(stored, digest):
                found = source
        return found


def channel_of(context: Mapping[str, Any], source: Source) -> common_pb2.Channel.ValueType:
    """The channel of a message: context.channel if it names one, else the library's kind, else the source's."""
    named = context.get("channel")
    if isinstance(named, str):
        lowered = named.strip().lower()
        if lowered in _SEGMENT_CHANNELS:
            return _SEGMENT_CHANNELS[lowered]
        channel = wire.channel_value(lowered)
        if channel != common_pb2.CHANNEL_UNSPECIFIED:
            return channel
    library = context.get("library")
    name = library.get("name") if isinstance(library, dict) else None
    if isinstance(name, str):
        if name.startswith(_BROWSER_LIBRARIES):
            return common_pb2.CHANNEL_WEB
        if name.startswith(_MOBILE_LIBRARIES):
            return common_pb2.CHANNEL_APP
    return source.default_channel
