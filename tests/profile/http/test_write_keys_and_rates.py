"""Write keys kept as hashes only (configured as sha256:<hex>, compared in constant time), two keys of a source
working at once while one replaces the other, and a rate limit per source answered with 429 and Retry-After;
all through a real profile's HTTP endpoint."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import pytest
from pydantic import ValidationError

from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres
from omni_profile import main as profile_main
from omni_profile.http.sources import hash_write_key, new_write_key

from .conftest import basic, running_endpoint


def _message() -> dict[str, Any]:
    return {"userId": f"user-{uuid.uuid4().hex}", "event": "Signed Up", "messageId": str(uuid.uuid4())}


async def _post(url: str, key: str) -> tuple[int, dict[str, str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/v1/track", json=_message(), headers={"Authorization": basic(key)}) as response,
    ):
        await response.read()
        return response.status, dict(response.headers)


async def test_hashed_keys_rotate_and_the_hash_itself_is_no_key(
    postgres: EmbeddedPostgres, nats_server: EmbeddedNats
) -> None:
    old, old_hash = new_write_key("web")
    new, new_hash = new_write_key("web")
    assert old_hash == hash_write_key(old) and old not in old_hash
    keys = {old_hash: "web", new_hash: "web", hash_write_key("wk_pos_1"): {"name": "pos", "channel": "store"}}
    async with running_endpoint(postgres, nats_server, write_keys=keys) as endpoint:
        assert (await _post(endpoint.url, old))[0] == 200
        assert (await _post(endpoint.url, new))[0] == 200, "both keys of the source work during the rotation"
        assert (await _post(endpoint.url, "wk_pos_1"))[0] == 200
        # What the settings hold is not a key: a leaked configuration does not let anyone send.
        assert (await _post(endpoint.url, old_hash))[0] == 401
        assert (await _post(endpoint.url, "wk_guess"))[0] == 401


def test_a_malformed_hash_is_refused_at_start() -> None:
    with pytest.raises(ValidationError, match="hashed write key"):
        profile_main.Settings(
            database_url="postgresql+asyncpg://x/y",
            nats_url="nats://127.0.0.1:1",
            identity_target="127.0.0.1:1",
            write_keys={"sha256:not-hex": "web"},
        )


async def test_a_source_over_its_rate_is_told_when_to_retry_and_others_go_on(
    postgres: EmbeddedPostgres, nats_server: EmbeddedNats
) -> None:
    async with running_endpoint(
        postgres, nats_server, http_rate_limit_per_s=0.5, http_rate_limit_burst=2
    ) as endpoint:
        assert [(await _post(endpoint.url, "wk_web"))[0] for _ in range(2)] == [200, 200]
        status, headers = await _post(endpoint.url, "wk_web")
        assert status == 429 and int(headers["Retry-After"]) == 2
        assert (await _post(endpoint.url, "wk_app"))[0] == 200, "another source has its own limit"
