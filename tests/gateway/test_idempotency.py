"""The request fingerprint: what counts as the same send."""

from __future__ import annotations

import hashlib
import json
import uuid

import pytest

from omni_gateway.domain import Channel, Purpose, SendRequest
from omni_gateway.idempotency import REUSED_REASON, ensure_same_request, fingerprint
from omni_gateway.models import Message
from omni_kit.errors import AlreadyExists

PERSON = uuid.UUID("0193a0b4-5f6e-7c3d-9a1b-2c3d4e5f6a7b")


def _request(**overrides: object) -> SendRequest:
    values: dict[str, object] = {
        "request_id": "r-1",
        "person_id": PERSON,
        "channel": Channel.EMAIL,
        "template_id": "cart",
        "variables": {"a": 1, "b": {"c": [1, 2]}},
        "journey_id": "j-1",
    }
    values.update(overrides)
    return SendRequest(**values)  # type: ignore[arg-type]


def test_same_content_has_the_same_fingerprint_whatever_the_key_order_or_journey() -> None:
    assert fingerprint(_request()) == fingerprint(
        _request(variables={"b": {"c": [1, 2]}, "a": 1}, journey_id="j-2", request_id="r-2")
    )


@pytest.mark.parametrize(
    "change",
    [
        {"person_id": uuid.UUID(int=1)},
        {"channel": Channel.SMS},
        {"template_id": "other"},
        {"variables": {"a": 2, "b": {"c": [1, 2]}}},
        {"variables": {}},
        {"purpose": Purpose.TRANSACTIONAL},
    ],
)
def test_other_content_has_another_fingerprint(change: dict[str, object]) -> None:
    assert fingerprint(_request(**change)) != fingerprint(_request())


def test_a_marketing_request_keeps_the_fingerprint_messages_had_before_purposes_were_recorded() -> None:
    # What fingerprint() hashed before a message had a purpose; rows stored then hold this.
    content = {"person_id": str(PERSON), "channel": "email", "template_id": "cart", "variables": {"a": 1}}
    stored = hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    assert fingerprint(_request(variables={"a": 1}, purpose=Purpose.MARKETING)) == stored


def test_a_reused_key_with_other_content_is_refused() -> None:
    message = Message(id=uuid.uuid4(), request_id="r-1", fingerprint=fingerprint(_request()))
    ensure_same_request(message, fingerprint(_request()))
    with pytest.raises(AlreadyExists) as raised:
        ensure_same_request(message, fingerprint(_request(template_id="other")))
    assert raised.value.reason == REUSED_REASON
    assert raised.value.metadata["request_id"] == "r-1"
