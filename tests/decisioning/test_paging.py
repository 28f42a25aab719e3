"""Page tokens round-trip and reject anything not issued by the service."""

from __future__ import annotations

import base64
import uuid

from omni_decisioning.paging import decode_token, encode_token


def test_a_token_round_trips() -> None:
    after = uuid.uuid4()
    assert decode_token(encode_token(after)) == after


def test_foreign_tokens_are_refused() -> None:
    assert decode_token("not a token") is None
    assert decode_token("") is None
    assert decode_token(base64.urlsafe_b64encode(b'{"after": 3}').decode()) is None
    assert decode_token(base64.urlsafe_b64encode(b'{"v": 1, "after": "nope"}').decode()) is None
    assert decode_token(base64.urlsafe_b64encode(b"[1, 2]").decode()) is None
