"""Identity and profile with the Segment-compatible endpoint, started in-process for a test module."""

from __future__ import annotations

import base64
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
import grpc
import pytest
import sqlalchemy as sa

from omni.common.v1 import common_pb2
from omni.identity.v1 import identity_pb2, identity_pb2_grpc
from omni.profile.v1 import profile_pb2, profile_pb2_grpc
from omni_identity import main as identity_main
from omni_kit.db import create_engine
from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres
from omni_profile import main as profile_main

from ..support import COMMON, EventLog, Services, close_runtime

WRITE_KEYS = {
    "wk_web": "web",
    "wk_app": "app",
    "wk_pos": {"name": "pos", "channel": "store"},
}


@dataclass
class Endpoint:
    """The running services and the base URL of the tracking endpoint."""

    services: Services
    url: str
    session: aiohttp.ClientSession

    async def post(
        self, path: str, body: Any, *, write_key: str | None = "wk_web", **kwargs: Any
    ) -> tuple[int, Any]:
        """POST a JSON body (or raw bytes) with Basic auth; return the status and the JSON answer."""
        headers = dict(kwargs.pop("headers", {}))
        if write_key is not None:
            headers["Authorization"] = basic(write_key)
        data = body if isinstance(body, bytes) else None
        json_body = None if isinstance(body, bytes) else body
        async with self.session.post(
            f"{self.url}{path}", json=json_body, data=data, headers=headers, **kwargs
        ) as response:
            return response.status, await response.json(content_type=None)

    async def person_of(self, type_: str, value: str) -> str:
        """The person identity holds this identifier for."""
        response = await self.services.identity.LookupPerson(
            identity_pb2.LookupPersonRequest(identifier=common_pb2.Identifier(type=type_, value=value))
        )
        return response.person.id

    async def profile_of(self, type_: str, value: str, recent: int = 50) -> profile_pb2.Profile:
        """The profile of the person holding this identifier."""
        person = await self.person_of(type_, value)
        response = await self.services.profile.GetProfile(
            profile_pb2.GetProfileRequest(person_id=person, recent_event_count=recent)
        )
        return response.profile

    async def event_keys(self, *keys: str) -> set[str]:
        """Which of these events ("source:id") are stored."""
        async with self.services.database.connect() as connection:
            rows = await connection.execute(
                sa.text(
                    "SELECT source || ':' || id AS key FROM events WHERE source || ':' || id = ANY(:keys)"
                ),
                {"keys": list(keys)},
            )
            return {row.key for row in rows}


def key(event: profile_pb2.Event) -> str:
    """An event's identity as "source:id"."""
    return f"{event.source}:{event.id}"


def basic(write_key: str) -> str:
    """The Authorization header Segment libraries send: Basic with the write key as user, no password."""
    return "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()


@pytest.fixture(scope="module")
async def endpoint(postgres: EmbeddedPostgres, nats_server: EmbeddedNats) -> AsyncIterator[Endpoint]:
    """Identity, and profile with its HTTP endpoint on a free port, for the whole module."""
    async with running_endpoint(postgres, nats_server) as running:
        yield running


@contextlib.asynccontextmanager
async def running_endpoint(
    postgres: EmbeddedPostgres, nats_server: EmbeddedNats, **profile_settings: Any
) -> AsyncIterator[Endpoint]:
    """Identity, and profile with its HTTP endpoint on a free port and these settings, on fresh databases."""
    namespace = "t" + uuid.uuid4().hex[:10]
    identity_db = f"identity_{uuid.uuid4().hex[:16]}"
    profile_db = f"profile_{uuid.uuid4().hex[:16]}"
    postgres.create_database(identity_db)
    postgres.create_database(profile_db)
    shared = {**COMMON, "nats_url": nats_server.url, "event_namespace": namespace}
    identity_runtime = await identity_main.start(
        identity_main.Settings.model_validate({**shared, "database_url": postgres.url(identity_db)})
    )
    profile_runtime = await profile_main.start(
        profile_main.Settings.model_validate(
            {
                **shared,
                "database_url": postgres.url(profile_db),
                "identity_target": f"127.0.0.1:{identity_runtime.port}",
                "http_host": "127.0.0.1",
                "http_port": 0,
                "write_keys": WRITE_KEYS,
                **profile_settings,
            }
        )
    )
    assert profile_runtime.http is not None
    database = create_engine(postgres.url(profile_db), application_name="omni-test-profile-http")
    profile_channel = grpc.aio.insecure_channel(f"127.0.0.1:{profile_runtime.port}")
    identity_channel = grpc.aio.insecure_channel(f"127.0.0.1:{identity_runtime.port}")
    session = aiohttp.ClientSession()
    services = Services(
        profile_runtime=profile_runtime,
        identity_runtime=identity_runtime,
        profile=profile_pb2_grpc.ProfileServiceStub(profile_channel),
        identity=identity_pb2_grpc.IdentityServiceStub(identity_channel),
        namespace=namespace,
        database=database,
        js=cast(Any, None),
        events=EventLog(),
    )
    try:
        yield Endpoint(services, f"http://127.0.0.1:{profile_runtime.http.port}", session)
    finally:
        await session.close()
        await profile_channel.close()
        await identity_channel.close()
        await database.dispose()
        await close_runtime(profile_runtime)
        await close_runtime(identity_runtime)
        postgres.drop_database(profile_db)
        postgres.drop_database(identity_db)
