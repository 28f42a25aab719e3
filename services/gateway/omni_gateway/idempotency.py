"""Idempotent sends, the way Stripe does them: the first result for a key is kept and replayed, and the same
key with other content is refused rather than silently answered with the first result."""

from __future__ import annotations

import hashlib
import json

from omni_gateway.domain import Purpose, SendRequest
from omni_gateway.models import Message
from omni_kit.errors import AlreadyExists

REUSED_REASON = "IDEMPOTENCY_KEY_REUSED"


def fingerprint(request: SendRequest) -> str:
    """A hash of what a request asks for (person, channel, template, variables, purpose), not of how it is
    keyed.

    The journey is left out: it says who asked, not what is sent. The purpose counts only when it is not
    marketing, so messages stored before purposes were recorded (all marketing) keep matching their replays.
    """
    content: dict[str, object] = {
        "person_id": str(request.person_id),
        "channel": request.channel.value,
        "template_id": request.template_id,
        "variables": request.variables,
    }
    if request.purpose != Purpose.MARKETING:
        content["purpose"] = request.purpose.value
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def ensure_same_request(message: Message, request_fingerprint: str) -> None:
    """Refuse a request that reuses the key of a message with other content."""
    if message.fingerprint != request_fingerprint:
        raise AlreadyExists(
            message=(
                f"request_id {message.request_id!r} was used for a different message "
                f"({message.id}); use a new request_id for new content"
            ),
            reason=REUSED_REASON,
            metadata={"request_id": message.request_id, "message_id": str(message.id)},
        )
