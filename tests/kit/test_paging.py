"""Opaque page tokens round-trip, and refuse what another list or nobody issued."""

from __future__ import annotations

import base64
import uuid

import pytest

from omni_kit.ids import new_id
from omni_kit.paging import PageTokenError, decode_after, encode_after, pack, unpack


def test_tokens_round_trip() -> None:
    after = new_id()
    assert decode_after("segments", encode_after("segments", after)) == after
    assert unpack(pack("timeline", {"t": 17, "i": "e-1"}), "timeline")["t"] == 17


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not a token",
        encode_after("journeys", uuid.uuid4()),  # another list's token
        base64.urlsafe_b64encode(b'{"k": "segments", "v": 1, "a": "nope"}').decode(),
        base64.urlsafe_b64encode(
            b'{"k": "segments", "v": 9, "a": "00000000-0000-0000-0000-000000000000"}'
        ).decode(),
        base64.urlsafe_b64encode(b"[1, 2]").decode(),
        base64.urlsafe_b64encode(b'{"k": "segments", "v": 1}').decode(),
    ],
)
def test_foreign_tokens_are_refused(token: str) -> None:
    with pytest.raises(PageTokenError):
        decode_after("segments", token)
