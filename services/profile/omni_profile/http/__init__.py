"""The Segment-compatible HTTP tracking endpoint, and the intake of events that keeps the good ones.

segment.py   Segment messages → profile events (ids per source, identifiers, types, clock skew)
sources.py   write keys, their sources, and the channel a message came from
intake.py    recording many events where bad ones are set aside; also StreamTrackEvents' stream
server.py    the aiohttp routes, write keys, body limits and Segment-style answers
lookup.py    whether identity holds an identifier (an alias call's previousId)
"""

from omni_profile.http.intake import Intake, consume_stream
from omni_profile.http.lookup import IdentifierLookup
from omni_profile.http.server import HttpEndpoint
from omni_profile.http.sources import Source, SourceSetting, WriteKey

__all__ = [
    "HttpEndpoint",
    "IdentifierLookup",
    "Intake",
    "Source",
    "SourceSetting",
    "WriteKey",
    "consume_stream",
]
