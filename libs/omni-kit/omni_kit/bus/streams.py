"""The JetStream streams Omni's events live in."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import BadRequestError

EVENTS_STREAM = "OMNI_EVENTS"
DLQ_STREAM = "OMNI_DLQ"


def events_stream(namespace: str = "omni") -> str:
    """The stream holding a namespace's events ("omni" → OMNI_EVENTS); tests use their own namespaces."""
    return f"{namespace.upper()}_EVENTS"


def dlq_stream(namespace: str = "omni") -> str:
    """The stream holding a namespace's dead letters ("omni" → OMNI_DLQ)."""
    return f"{namespace.upper()}_DLQ"


# Window in which JetStream drops a message whose Nats-Msg-Id it has seen: a relay that crashed after
# publishing but before marking the row republishes within it.
DUPLICATE_WINDOW_S = 15 * 60
EVENTS_MAX_AGE_S = 7 * 24 * 3600
"""How long the events stream keeps a message (a consumer created anew replays that far back)."""
DLQ_MAX_AGE_S = 30 * 24 * 3600
"""How long the dead-letter stream keeps a message."""


async def ensure_streams(js: JetStreamContext, *, namespace: str = "omni", replicas: int = 1) -> None:
    """Create (or update) the events and dead-letter streams; safe to call from every service at start."""
    for name, subjects, max_age_s in (
        (events_stream(namespace), [f"{namespace}.events.>"], EVENTS_MAX_AGE_S),
        (dlq_stream(namespace), [f"{namespace}.dlq.>"], DLQ_MAX_AGE_S),
    ):
        config = StreamConfig(
            name=name,
            subjects=subjects,
            storage=StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=DUPLICATE_WINDOW_S,
            max_age=max_age_s,
        )
        try:
            await js.add_stream(config)
        except BadRequestError:
            await js.update_stream(config)
