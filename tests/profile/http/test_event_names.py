"""Event names in any script and of any sensible length are recorded; the name is kept as sent."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omni_profile import validation
from omni_profile.http.event_types import snake_case

from ..support import unique
from .conftest import Endpoint


def _track(user: str, name: str, **fields: Any) -> dict[str, Any]:
    return {"type": "track", "messageId": unique("mid-"), "userId": user, "event": name, **fields}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Товар добавлен", "товар_добавлен"),
        ("ТоварДобавлен", "товар_добавлен"),
        ("商品を追加", "商品を追加"),
        ("カートに 追加", "カートに_追加"),
        ("उत्पाद जोड़ा गया", "उत्पाद_जोड़ा_गया"),
        ("Ürün Eklendi", "urun_eklendi"),
        ("Produkt hinzugefügt", "produkt_hinzugefugt"),
        ("Ｐｒｏｄｕｃｔ Ａｄｄｅｄ", "cart_item_added"),  # noqa: RUF001 - full-width letters are the point
    ],
)
async def test_names_in_any_script_are_recorded_with_their_name_as_sent(
    endpoint: Endpoint, name: str, expected: str
) -> None:
    user = unique("user-")
    status, body = await endpoint.post("/v1/track", _track(user, name, properties={"sku": "a-1"}))
    assert (status, body) == (200, {"success": True})
    (event,) = (await endpoint.profile_of("user_id", user)).recent_events
    assert (event.type, event.name) == (expected, name)
    assert dict(event.properties) == {"sku": "a-1"}


async def test_long_names_are_recorded_and_stay_apart(endpoint: Endpoint) -> None:
    user = unique("user-")
    stem = "Customer opened the seasonal recommendations carousel on the home page and scrolled to "
    names = [stem + "the end of the first row", stem + "the end of the second row"]
    for name in names:
        assert (await endpoint.post("/v1/track", _track(user, name)))[0] == 200
    events = list((await endpoint.profile_of("user_id", user)).recent_events)
    assert sorted(e.name for e in events) == sorted(names)
    types = {e.type for e in events}
    assert len(types) == 2
    assert all(90 < len(t) <= validation.MAX_EVENT_TYPE and validation.is_event_type(t) for t in types)


async def test_a_name_over_the_cap_is_refused_with_its_field(endpoint: Endpoint) -> None:
    name = "Товар добавлен " * 70
    status, body = await endpoint.post("/v1/track", _track(unique("user-"), name))
    assert status == 400
    assert body["errors"][0]["fields"] == [
        {"field": "event", "description": "must be at most 1,024 characters"}
    ]


@settings(max_examples=3000, deadline=None)
@given(st.text(max_size=200))
def test_every_name_becomes_a_type_grpc_accepts(name: str) -> None:
    event_type = snake_case(name)
    assert event_type == "" or validation.is_event_type(event_type)
