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


async def ensure_streams(js: JetStreamContext, *, namespace: str = "omni", replicas: int = 1) -> None:
    """Create (or update) the events and dead-letter streams; safe to call from every service at start."""
    for name, subjects, max_age_days in (
        (events_stream(namespace), [f"{namespace}.events.>"], 7),
        (dlq_stream(namespace), [f"{namespace}.dlq.>"], 30),
    ):
        config = StreamConfig(
            name=name,
            subjects=subjects,
            storage=StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=DUPLICATE_WINDOW_S,
            max_age=max_age_days * 24 * 3600,
        )
        try:
            await js.add_stream(config)
        except BadRequestError:
            await js.update_stream(config)
