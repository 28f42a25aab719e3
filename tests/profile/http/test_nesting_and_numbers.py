"""Values the endpoint cannot store and read back are refused with their field, alone: properties or a context
nested deeper than a profile read can decode (however deep: ten thousand levels is a 400, never a 500), numbers
JSON reads as infinity, unpaired surrogates."""

from __future__ import annotations

import json
from typing import Any

import pytest

from omni.profile.v1 import profile_pb2
from omni_profile import validation

from ..support import unique
from .conftest import Endpoint

DEPTH = validation.MAX_STRUCT_DEPTH


def _track(user: str, **fields: Any) -> dict[str, Any]:
    return {"type": "track", "messageId": unique("mid-"), "userId": user, "event": "Item Viewed", **fields}


def _nested_json(levels: int, leaf: str = '"leaf"') -> str:
    """JSON text of `levels` nested objects, {"a": {"a": …}}, written out (the json module would recurse)."""
    return '{"a": ' * levels + leaf + "}" * levels


def _body(message: dict[str, Any], field: str, value_json: str, *, batch: list[Any] | None = None) -> bytes:
    """The message as JSON with field's value spliced in as raw JSON text; inside a batch when given one."""
    marker = f"<{unique()}>"
    text = json.dumps(
        {"batch": [*batch, {**message, field: marker}]} if batch else {**message, field: marker}
    )
    return text.replace(json.dumps(marker), value_json).encode()


def _deep_path(prefix: str, level: int) -> str:
    return prefix + ".a" * (level - 1)


async def test_properties_nested_to_the_limit_are_recorded_and_read_back(endpoint: Endpoint) -> None:
    user = unique("user-")
    body = _body(_track(user), "properties", _nested_json(DEPTH))
    assert await endpoint.post("/v1/track", body) == (200, {"success": True})
    person = await endpoint.person_of("user_id", user)
    (event,) = (await endpoint.profile_of("user_id", user)).recent_events
    timeline = await endpoint.services.profile.ListTimeline(profile_pb2.ListTimelineRequest(person_id=person))
    assert [e.id for e in timeline.events] == [event.id]


@pytest.mark.parametrize("levels", [DEPTH + 1, 200, 990, 10_000])
@pytest.mark.parametrize("field", ["properties", "context"])
async def test_deeper_is_refused_with_the_field_and_nothing_is_written(
    endpoint: Endpoint, levels: int, field: str
) -> None:
    before = await endpoint.services.counts()
    body = _body(_track(unique("user-")), field, _nested_json(levels))
    status, answer = await endpoint.post("/v1/track", body)
    assert status == 400, answer
    ((violation,),) = [e["fields"] for e in answer["errors"]]
    assert violation["field"] == _deep_path(field, DEPTH + 1)
    assert "deeper than 32 levels" in violation["description"]
    assert await endpoint.services.counts() == before


@pytest.mark.parametrize("levels", [DEPTH + 1, 10_000])
async def test_in_a_batch_the_deep_message_is_refused_and_the_others_recorded(
    endpoint: Endpoint, levels: int
) -> None:
    user = unique("user-")
    good = [_track(user), _track(user)]
    body = _body(_track(user), "properties", _nested_json(levels), batch=good)
    status, answer = await endpoint.post("/v1/batch", body)
    assert (status, answer["accepted"], answer["rejected"]) == (200, 2, 1)
    assert [(e["index"], [f["field"] for f in e["fields"]]) for e in answer["errors"]] == [
        (2, [_deep_path("properties", DEPTH + 1)])
    ]
    assert len((await endpoint.profile_of("user_id", user)).recent_events) == 2


@pytest.mark.parametrize(
    ("field", "value_json", "path"),
    [
        ("context", '{"x": 1e400}', "context.x"),
        ("properties", '{"price": -1e999, "qty": 1}', "properties.price"),
        ("properties", '{"ids": [1, ' + "9" * 400 + "]}", "properties.ids[1]"),
        ("properties", '{"name": "caf\\udce9"}', "properties.name"),
    ],
)
async def test_numbers_and_text_that_cannot_be_stored_are_refused_alone(
    endpoint: Endpoint, field: str, value_json: str, path: str
) -> None:
    user = unique("user-")
    before = await endpoint.services.counts()
    status, answer = await endpoint.post("/v1/track", _body(_track(user), field, value_json))
    assert status == 400, answer
    assert [f["field"] for f in answer["errors"][0]["fields"]] == [path]
    assert await endpoint.services.counts() == before
    # In a batch the others are recorded.
    body = _body(_track(user), field, value_json, batch=[_track(user)])
    status, answer = await endpoint.post("/v1/batch", body)
    assert (status, answer["accepted"], answer["rejected"]) == (200, 1, 1)
    assert answer["errors"][0]["index"] == 1
    assert [f["field"] for f in answer["errors"][0]["fields"]] == [path]


async def test_a_batch_context_that_cannot_be_stored_refuses_each_message_not_the_request(
    endpoint: Endpoint,
) -> None:
    user = unique("user-")
    text = json.dumps({"batch": [_track(user), _track(user)], "context": "<context>"})
    body = text.replace('"<context>"', '{"x": 1e400}').encode()
    status, answer = await endpoint.post("/v1/batch", body)
    assert status == 400
    assert [e["fields"][0]["field"] for e in answer["errors"]] == ["context.x", "context.x"]
