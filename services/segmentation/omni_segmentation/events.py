"""What segmentation publishes: segmentation.person_entered_segment and person_exited_segment (payloads in
omni.segmentation.v1.events), staged by membership.py with the trace of the person's latest event. What it
consumes is in consumers.py."""

from __future__ import annotations

from opentelemetry import propagate

PERSON_ENTERED_SEGMENT = "segmentation.person_entered_segment"
PERSON_EXITED_SEGMENT = "segmentation.person_exited_segment"


def current_trace_context() -> dict[str, str]:
    """The W3C trace context of the current span (a consumer's, a child of the producer's; or a call's), for
    the events staged under it."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier
