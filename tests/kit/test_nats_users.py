"""NATS users with least privilege (omni_kit.security.nats_users) on a real NATS server: each service's runtime
connects as its own user, publishes its events and consumes others' through its durable consumers; it cannot
publish on another service's subjects, subscribe to the event subjects, read other services' inboxes, or take
over another service's consumer."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from nats.js.api import ConsumerConfig
from sqlalchemy.ext.asyncio import AsyncSession

from omni.events.v1 import envelope_pb2
from omni.identity.v1 import events_pb2
from omni_kit.bus import create_bus_tables, events_stream
from omni_kit.db import create_engine
from omni_kit.embedded import EmbeddedNats
from omni_kit.runtime import Runtime
from omni_kit.security.nats_users import ADMIN, GRANTS, inbox_prefix, make_passwords, server_config
from omni_kit.settings import ServiceSettings

pytestmark = pytest.mark.integration

PASSWORDS = make_passwords(list(GRANTS))


@pytest.fixture(scope="module")
def nats_with_users(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    with EmbeddedNats(tmp_path_factory.mktemp("nats-users"), config=server_config(PASSWORDS)) as server:
        yield server


async def _runtime(name: str, server: EmbeddedNats, make_database: Callable[..., str]) -> Runtime:
    url = make_database(f"nats_{name}")
    engine = create_engine(url, application_name="omni-test-nats-users")

    def create(connection: Any) -> None:
        create_bus_tables(Operations(MigrationContext.configure(connection)))

    async with engine.begin() as connection:
        await connection.run_sync(create)
    await engine.dispose()
    settings = ServiceSettings(
        database_url=url,
        nats_url=server.url,
        grpc_host="127.0.0.1",
        nats_user=name,
        nats_password=PASSWORDS[name],  # type: ignore[arg-type]
    )
    runtime = Runtime(name, settings)
    await runtime.open()
    return runtime


async def _connect_as(server: EmbeddedNats, name: str, errors: list[str]) -> Any:
    async def error(e: Exception) -> None:
        errors.append(str(e))

    return await nats.connect(
        server.url,
        user=name,
        password=PASSWORDS[name],
        inbox_prefix=inbox_prefix(name),
        error_cb=error,
        allow_reconnect=False,
    )


@pytest.fixture
async def identity_and_profile(
    nats_with_users: EmbeddedNats, make_database: Callable[..., str]
) -> AsyncIterator[tuple[Runtime, Runtime, Any]]:
    identity = await _runtime("identity", nats_with_users, make_database)
    profile = await _runtime("profile", nats_with_users, make_database)
    received: list[envelope_pb2.Envelope] = []
    arrived = asyncio.Event()

    async def handle(session: AsyncSession, envelope: envelope_pb2.Envelope) -> None:
        received.append(envelope)
        arrived.set()

    profile.add_consumer(durable="identity-lineage", event_types=["identity.persons_merged"], handler=handle)
    await identity.serve(service_names=[], register=lambda server: None)
    await profile.serve(service_names=[], register=lambda server: None)
    yield identity, profile, (received, arrived)
    await profile.close()
    await identity.close()


async def test_services_publish_their_events_and_consume_others_as_their_own_users(
    identity_and_profile: tuple[Runtime, Runtime, Any],
) -> None:
    identity, _, (received, arrived) = identity_and_profile
    person = str(uuid.uuid4())
    async with identity.transaction() as session:
        await identity.outbox.add(
            session,
            events_pb2.PersonsMergedEvent(survivor_person_id=person, merged_person_ids=[str(uuid.uuid4())]),
            event_type="identity.persons_merged",
            person_id=person,
        )
    async with asyncio.timeout(10):
        while not any(e.person_id == person for e in received):
            await arrived.wait()
            arrived.clear()


async def test_a_service_cannot_publish_on_another_services_subject(
    identity_and_profile: tuple[Runtime, Runtime, Any],
    nats_with_users: EmbeddedNats,
) -> None:
    errors: list[str] = []
    client = await _connect_as(nats_with_users, "profile", errors)
    try:
        js = client.jetstream(timeout=1)
        # Its own subject is stored; identity's is refused (no acknowledgement ever comes).
        assert (await js.publish("omni.events.profile.profile_changed", b"{}")).stream == events_stream()
        with pytest.raises((nats.errors.TimeoutError, nats.js.errors.Error, nats.errors.Error)):
            await js.publish("omni.events.identity.persons_merged", b"forged")
        # Nor may it listen to the event subjects or another service's inbox.
        await client.subscribe("omni.events.>")
        await client.subscribe(f"{inbox_prefix('identity')}.>")
        await client.flush()
        await asyncio.sleep(0.2)
    finally:
        await client.close()
    violations = [e for e in errors if "permissions violation" in e.lower()]
    assert any("publish" in e.lower() and "omni.events.identity" in e for e in violations), errors
    assert any("subscription" in e.lower() and "omni.events.>" in e for e in violations), errors
    assert any("subscription" in e.lower() and "_inbox.identity" in e.lower() for e in violations), errors


async def test_a_service_cannot_create_or_pull_another_services_consumer(
    identity_and_profile: tuple[Runtime, Runtime, Any],
    nats_with_users: EmbeddedNats,
) -> None:
    errors: list[str] = []
    client = await _connect_as(nats_with_users, "segmentation", errors)
    try:
        js = client.jetstream(timeout=1)
        with pytest.raises((nats.errors.TimeoutError, nats.js.errors.Error, nats.errors.Error)):
            await js.add_consumer(
                events_stream(),
                ConsumerConfig(durable_name="profile-identity-lineage", filter_subject="omni.events.>"),
            )
        subscription = await js.pull_subscribe_bind("profile-identity-lineage", stream=events_stream())
        with pytest.raises((nats.errors.TimeoutError, nats.js.errors.Error, nats.errors.Error)):
            await subscription.fetch(1, timeout=1)
    finally:
        await client.close()
    assert any("permissions violation" in e.lower() for e in errors), errors


async def test_without_a_password_nothing_connects_and_the_admin_may_do_everything(
    nats_with_users: EmbeddedNats,
) -> None:
    with pytest.raises((nats.errors.NoServersError, nats.errors.Error, OSError)):
        await nats.connect(nats_with_users.url, allow_reconnect=False, max_reconnect_attempts=0)
    errors: list[str] = []
    admin = await _connect_as(nats_with_users, ADMIN, errors)
    try:
        ack = await admin.jetstream(timeout=2).publish("omni.events.identity.persons_merged", b"{}")
        assert ack.stream == events_stream()
    finally:
        await admin.close()
    assert not errors


def test_every_durable_consumer_of_the_services_is_granted() -> None:
    # The durable names the services' mains give (read from their sources, so a new one fails here).
    root = Path(__file__).resolve().parents[2] / "services"
    for name, grant in GRANTS.items():
        text = next((root / name).glob("omni_*/main.py")).read_text()
        assert set(re.findall(r'durable="([a-z0-9-]+)"', text)) <= set(grant.durables), name


def test_the_deployments_users_are_the_grants(tmp_path: Path) -> None:
    import subprocess

    import yaml

    from omni_kit.embedded.nats import nats_server_binary
    from omni_kit.security.nats_users import password_variable

    root = Path(__file__).resolve().parents[2] / "deploy"
    configmap = yaml.safe_load((root / "k8s/components/nats-users/users.yaml").read_text())
    expected = server_config()
    assert configmap["data"]["users.conf"] == expected, "run `omni nats-config` into the ConfigMap"
    assert (root / "compose/nats-users.conf").read_text() == expected, "run `omni nats-config` into Compose"
    # The server takes it, the passwords coming from its environment.
    (tmp_path / "users.conf").write_text(expected)
    env = {password_variable(user): "x" for user in [*GRANTS, ADMIN]}
    checked = subprocess.run(
        [str(nats_server_binary()), "-c", str(tmp_path / "users.conf"), "-t"], env=env, capture_output=True
    )
    assert checked.returncode == 0, checked.stderr
