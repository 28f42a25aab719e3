"""With profile's database down the endpoint answers 503 with Retry-After (which the analytics libraries retry),
not 500, and records the same messages once the database is back.

Profile's PostgreSQL here is this module's own, on a fixed port, so stopping it disturbs no other test;
identity keeps the session's."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres, free_port

from ..support import unique
from .conftest import Endpoint, basic, running_endpoint


@pytest.fixture(scope="module")
def own_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL for profile alone, on a fixed port so that it comes back where profile looks."""
    server = EmbeddedPostgres(tmp_path_factory.mktemp("profile-http-pg"), free_port(), durable=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def endpoint_on_own_database(
    postgres: EmbeddedPostgres, nats_server: EmbeddedNats, own_postgres: EmbeddedPostgres
) -> AsyncIterator[Endpoint]:
    name = f"profile_{uuid.uuid4().hex[:12]}"
    own_postgres.create_database(name)
    async with running_endpoint(
        postgres, nats_server, database_url=own_postgres.url(name), db_health_interval_s=0.2
    ) as running:
        try:
            yield running
        finally:
            if not own_postgres.is_running():
                own_postgres.start()


def _calls() -> dict[str, tuple[str, dict[str, Any]]]:
    def message(kind: str, **fields: Any) -> dict[str, Any]:
        return {"type": kind, "messageId": unique("mid-"), "userId": unique("user-"), **fields}

    return {
        "track": ("/v1/track", message("track", event="Product Viewed")),
        "identify": ("/v1/identify", message("identify", traits={"plan": "gold"})),
        "batch": ("/v1/batch", {"batch": [message("track", event="Product Viewed"), message("page")]}),
    }


async def test_database_down_answers_503_with_retry_after_then_records(
    endpoint_on_own_database: Endpoint, own_postgres: EmbeddedPostgres
) -> None:
    endpoint = endpoint_on_own_database
    calls = _calls()
    own_postgres.stop()
    for name, (path, body) in calls.items():
        async with endpoint.session.post(
            f"{endpoint.url}{path}", json=body, headers={"Authorization": basic("wk_web")}
        ) as response:
            status, answer = response.status, await response.json(content_type=None)
            retry_after = response.headers.get("Retry-After")
        assert status == 503, (name, answer)
        assert answer["success"] is False and answer["code"] == "unavailable", name
        assert "database" in answer["message"], name
        assert retry_after is not None and int(retry_after) >= 1, name

    own_postgres.start()
    async with asyncio.timeout(30):
        # As a library would: the same message again after a 503, until it is recorded.
        while (answered := await endpoint.post(*calls["track"]))[0] == 503:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
    status, answer = answered
    assert status == 200, answer
    for name in ("identify", "batch"):
        status, answer = await endpoint.post(*calls[name])
        assert status == 200, (name, answer)
        assert answer.get("duplicates", 0) == 0, name
    track = calls["track"][1]
    profile = await endpoint.profile_of("user_id", track["userId"])
    assert [e.id for e in profile.recent_events] == [track["messageId"]], "recorded once, after the outage"
