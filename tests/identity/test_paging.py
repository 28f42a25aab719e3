"""Page sizes and opaque page tokens."""

from __future__ import annotations

import uuid

import pytest

from omni_identity.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, decode_token, encode_token, page_size


def test_page_sizes_default_and_cap() -> None:
    assert page_size(0) == DEFAULT_PAGE_SIZE
    assert page_size(7) == 7
    assert page_size(10**6) == MAX_PAGE_SIZE
    with pytest.raises(ValueError):
        page_size(-1)


def test_tokens_round_trip_and_strangers_are_refused() -> None:
    after = uuid.uuid4()
    assert decode_token(encode_token(after)) == after
    assert decode_token("") is None
    for foreign in ("x", "not-a-token", encode_token(after)[:-2], "bTE" + "A" * 30):
        with pytest.raises(ValueError):
            decode_token(foreign)
