"""With identity down the endpoint answers 503, which the analytics libraries retry, and writes nothing."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from omni_kit.db import create_engine
from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres
from omni_kit.embedded.ports import free_port
from omni_profile import main as profile_main

from ..support import COMMON, PROFILE_TABLES, close_runtime, unique
from .conftest import WRITE_KEYS, basic


@dataclass
class Stranded:
    """Profile's endpoint whose identity target has nothing listening, and profile's database."""

    url: str
    database: AsyncEngine

    async def counts(self) -> dict[str, int]:
        """Row counts of profile's tables."""
        async with self.database.connect() as connection:
            return {
                table: int(await connection.scalar(sa.text(f"SELECT count(*) FROM {table}")) or 0)
                for table in PROFILE_TABLES
            }


@pytest.fixture(scope="module")
async def stranded(postgres: EmbeddedPostgres, nats_server: EmbeddedNats) -> AsyncIterator[Stranded]:
    """Profile with its HTTP endpoint, pointed at a port where no identity listens."""
    database_name = f"profile_down_{uuid.uuid4().hex[:12]}"
    postgres.create_database(database_name)
    runtime = await profile_main.start(
        profile_main.Settings.model_validate(
            {
                **COMMON,
                "database_url": postgres.url(database_name),
                "nats_url": nats_server.url,
                "event_namespace": "t" + uuid.uuid4().hex[:10],
                "identity_target": f"127.0.0.1:{free_port()}",
                "identity_timeout_s": 1.0,
                "http_host": "127.0.0.1",
                "http_port": 0,
                "write_keys": WRITE_KEYS,
            }
        )
    )
    assert runtime.http is not None
    database = create_engine(postgres.url(database_name), application_name="omni-test-profile-http")
    try:
        yield Stranded(f"http://127.0.0.1:{runtime.http.port}", database)
    finally:
        await database.dispose()
        await close_runtime(runtime)
        postgres.drop_database(database_name)


def _message(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "messageId": unique("mid-"), "userId": unique("user-"), **fields}


CALLS: dict[str, tuple[str, dict[str, Any]]] = {
    # A server library's alias: previousId alone, so identity is asked whether it is a known cookie.
    "alias": ("/v1/alias", _message("alias", previousId=unique("old-user-"))),
    "track": ("/v1/track", _message("track", event="Product Viewed")),
    "identify": ("/v1/identify", _message("identify", traits={"plan": "gold"})),
    "batch": (
        "/v1/batch",
        {
            "batch": [
                _message("track", event="Product Viewed"),
                _message("alias", previousId=unique("old-user-")),
            ]
        },
    ),
}


@pytest.mark.parametrize("call", CALLS)
async def test_identity_down_answers_503_and_writes_nothing(stranded: Stranded, call: str) -> None:
    path, body = CALLS[call]
    before = await stranded.counts()
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{stranded.url}{path}", json=body, headers={"Authorization": basic("wk_web")}
        ) as response,
    ):
        status, answer = response.status, await response.json()
        retry_after = response.headers.get("Retry-After")
    assert status == 503, answer
    assert retry_after == "5"
    assert answer["success"] is False and answer["code"] == "unavailable"
    assert "identity" in answer["message"] and "retry" in answer["message"]
    assert await stranded.counts() == before
    assert before["events"] == 0
