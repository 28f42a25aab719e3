"""The Segment-compatible HTTP tracking endpoint, and the intake of events that keeps the good ones.

segment.py         Segment messages → profile events (ids per source, types, times, clock skew, context)
identifiers.py     the identifiers a message carries, and the message field each came from
event_types.py     event names as event types (lower snake case, in any script)
message_traits.py  the traits an identify call sets, and those it leaves out
json_sizes.py      JSON sizes as the limits count them (UTF-8 bytes), trimming to a size
sources.py         write keys, their sources, and the channel a message came from
intake.py          recording many events where bad ones are set aside; also StreamTrackEvents' stream
requests.py        reading a request: write key, body (size, compression, time), JSON
guards.py          CORS for browsers, throttling of failed write keys
server.py          the aiohttp routes and Segment-style answers
lookup.py          whether identity holds an identifier (an alias call's previousId)
"""

from omni_profile.http.intake import Intake, consume_stream
from omni_profile.http.lookup import IdentifierLookup
from omni_profile.http.server import EndpointLimits, HttpEndpoint
from omni_profile.http.sources import Source, SourceSetting, WriteKey

__all__ = [
    "EndpointLimits",
    "HttpEndpoint",
    "IdentifierLookup",
    "Intake",
    "Source",
    "SourceSetting",
    "WriteKey",
    "consume_stream",
]
