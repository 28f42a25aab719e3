"""Every kind of bad request to the tracking endpoint: its status, a Segment-style JSON answer, nothing written."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ..support import unique
from .conftest import Endpoint


def _track(**fields: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "messageId": unique("mid-"),
        "userId": unique("user-"),
        "event": "Viewed",
        **fields,
    }


async def _refused(
    endpoint: Endpoint, path: str, body: Any, status: int, *, write_key: str | None = "wk_web", **kwargs: Any
) -> dict[str, Any]:
    before = await endpoint.services.counts()
    answered, answer = await endpoint.post(path, body, write_key=write_key, **kwargs)
    assert answered == status, answer
    assert answer["success"] is False
    assert answer["code"] and answer["message"]
    assert await endpoint.services.counts() == before, "a refused request must write nothing"
    return answer


async def test_malformed_json_is_400(endpoint: Endpoint) -> None:
    answer = await _refused(endpoint, "/v1/track", b'{"type": "track", "event": ', 400)
    assert answer["code"] == "invalid_json"
    assert "not valid JSON" in answer["message"]


@pytest.mark.parametrize("body", [b"", b"[1, 2]", b'"track"', b'{"userId": "u", "n": NaN}'])
async def test_bodies_that_are_not_a_json_object_are_400(endpoint: Endpoint, body: bytes) -> None:
    await _refused(endpoint, "/v1/track", body, 400)


async def test_an_unknown_write_key_is_401(endpoint: Endpoint) -> None:
    answer = await _refused(endpoint, "/v1/track", _track(), 401, write_key="wk_stolen")
    assert answer == {"success": False, "code": "unauthorized", "message": "unknown write key"}


async def test_an_unknown_write_key_in_the_body_is_401(endpoint: Endpoint) -> None:
    await _refused(endpoint, "/v1/track", _track(writeKey="wk_stolen"), 401, write_key=None)


async def test_a_missing_write_key_is_401_and_says_how_to_give_one(endpoint: Endpoint) -> None:
    before = await endpoint.services.counts()
    async with endpoint.session.post(f"{endpoint.url}/v1/track", json=_track()) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Basic")
        answer = await response.json()
    assert "Basic" in answer["message"] and "writeKey" in answer["message"]
    assert await endpoint.services.counts() == before


async def test_other_authentication_schemes_are_401(endpoint: Endpoint) -> None:
    await _refused(
        endpoint, "/v1/track", _track(), 401, write_key=None, headers={"Authorization": "Bearer x"}
    )
    await _refused(
        endpoint, "/v1/track", _track(), 401, write_key=None, headers={"Authorization": "Basic not-base64!"}
    )


async def test_a_missing_message_id_is_400(endpoint: Endpoint) -> None:
    message = _track()
    del message["messageId"]
    answer = await _refused(endpoint, "/v1/track", message, 400)
    assert answer["errors"][0]["fields"] == [{"field": "messageId", "description": "is required"}]
    assert answer["message"] == "messageId: is required"


async def test_a_message_without_user_or_anonymous_id_is_400(endpoint: Endpoint) -> None:
    answer = await _refused(endpoint, "/v1/track", _track(userId=None), 400)
    assert [f["field"] for f in answer["errors"][0]["fields"]] == ["userId"]


@pytest.mark.parametrize(
    ("shift", "word"), [(timedelta(days=2), "future"), (-timedelta(days=5 * 365 + 30), "past")]
)
async def test_a_timestamp_far_in_the_future_or_past_is_400(
    endpoint: Endpoint, shift: timedelta, word: str
) -> None:
    answer = await _refused(
        endpoint, "/v1/track", _track(timestamp=(datetime.now(UTC) + shift).isoformat()), 400
    )
    assert answer["errors"][0]["fields"][0]["field"] == "timestamp"
    assert word in answer["message"]


async def test_a_timestamp_that_is_not_a_date_is_400(endpoint: Endpoint) -> None:
    answer = await _refused(endpoint, "/v1/track", _track(timestamp="last tuesday"), 400)
    assert answer["errors"][0]["fields"][0]["field"] == "timestamp"


async def test_a_bad_batch_sent_at_is_400(endpoint: Endpoint) -> None:
    answer = await _refused(endpoint, "/v1/batch", {"batch": [_track()], "sentAt": "soon"}, 400)
    assert answer["message"].startswith("sentAt")


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (_track(properties=["a", "b"]), "properties"),
        (_track(userId={"id": 1}), "userId"),
        (_track(event=42), "event"),
        ({**_track(), "type": "identify", "traits": "gold"}, "traits"),
    ],
)
async def test_fields_of_the_wrong_type_are_400(
    endpoint: Endpoint, message: dict[str, Any], field: str
) -> None:
    path = f"/v1/{message['type']}"
    answer = await _refused(endpoint, path, message, 400)
    assert field in [f["field"] for f in answer["errors"][0]["fields"]]


async def test_a_message_of_another_type_than_the_endpoint_is_400(endpoint: Endpoint) -> None:
    answer = await _refused(endpoint, "/v1/page", _track(), 400)
    assert answer["errors"][0]["fields"][0]["field"] == "type"


@pytest.mark.parametrize("batch", [None, [], {"type": "track"}, "x"])
async def test_a_batch_that_is_not_a_list_of_messages_is_400(endpoint: Endpoint, batch: Any) -> None:
    answer = await _refused(endpoint, "/v1/batch", {"batch": batch}, 400)
    assert "batch" in answer["message"]


async def test_a_batch_context_that_is_not_an_object_is_400(endpoint: Endpoint) -> None:
    answer = await _refused(endpoint, "/v1/batch", {"batch": [_track()], "context": "web"}, 400)
    assert answer["message"].startswith("context")


async def test_a_batch_of_only_bad_messages_is_400_with_each_reason(endpoint: Endpoint) -> None:
    answer = await _refused(endpoint, "/v1/batch", {"batch": [_track(userId=None), "not a message"]}, 400)
    assert [e["index"] for e in answer["errors"]] == [0, 1]
    assert answer["message"].startswith("none of the 2 messages")


async def test_a_body_over_500_kb_is_413(endpoint: Endpoint) -> None:
    messages = [_track(properties={"text": "x" * 20_000}) for _ in range(30)]
    answer = await _refused(endpoint, "/v1/batch", {"batch": messages}, 413)
    assert answer["code"] == "request_too_large"


async def test_a_gzipped_body_over_500_kb_is_413_however_well_it_compresses(endpoint: Endpoint) -> None:
    body = gzip.compress(json.dumps({"batch": [_track(properties={"text": "x" * 600_000})]}).encode())
    assert len(body) < 10_000
    await _refused(endpoint, "/v1/batch", body, 413, headers={"Content-Encoding": "gzip"})


async def test_a_body_that_is_not_valid_gzip_is_400(endpoint: Endpoint) -> None:
    answer = await _refused(endpoint, "/v1/track", b"not gzip", 400, headers={"Content-Encoding": "gzip"})
    assert answer["code"] == "invalid_body" and "gzip" in answer["message"]
    # Cut short, it decompresses to the start of a JSON document.
    valid = gzip.compress(json.dumps(_track()).encode())
    answer = await _refused(
        endpoint, "/v1/track", valid[: len(valid) // 2], 400, headers={"Content-Encoding": "gzip"}
    )
    assert answer["code"] == "invalid_json"


async def test_a_message_over_32_kb_is_400_alone_and_reported_in_a_batch(endpoint: Endpoint) -> None:
    big = _track(properties={"text": "x" * 33_000})
    answer = await _refused(endpoint, "/v1/track", big, 400)
    assert "32 KB" in answer["message"]
    good = _track()
    status, body = await endpoint.post("/v1/batch", {"batch": [big, good]})
    assert (status, body["accepted"], body["rejected"]) == (200, 1, 1)
    assert body["errors"][0]["index"] == 0 and "32 KB" in body["errors"][0]["message"]
    assert await endpoint.event_keys(f"web:{big['messageId']}", f"web:{good['messageId']}") == {
        f"web:{good['messageId']}"
    }


async def test_unknown_paths_answer_json(endpoint: Endpoint) -> None:
    answer = await _refused(endpoint, "/v1/purchase", _track(), 404)
    assert answer["code"] == "not_found"
    async with endpoint.session.get(f"{endpoint.url}/v1/track") as response:
        assert response.status == 405
        assert (await response.json())["success"] is False
