"""Write keys and their sources, and which channel a Segment message came from."""

from __future__ import annotations

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
