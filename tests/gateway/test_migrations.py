"""The gateway's migrations build the tables the models describe, keep the messages stored before them (their
fingerprints computed again), and undo cleanly."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import replace

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from omni_gateway.domain import Channel, Purpose, SendRequest
from omni_gateway.main import MIGRATIONS
from omni_gateway.models import Base
from omni_gateway.wire import send_fingerprint
from omni_kit.db import create_engine, current_revision, migrate
from omni_kit.idempotency import idempotency_metadata
from omni_kit.ids import new_id
from omni_kit.lineage import lineage_metadata

from ..migrations import schema_differences


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


# A message row as the gateway wrote it; {columns} and {values} add to it.
_INSERT = (
    "INSERT INTO messages (id, request_id, fingerprint, person_id, channel, template_id, status{columns}) "
    "VALUES (:id, :r, 'f', :p, 'email', 'cart', 'sent'{values})"
)


async def test_messages_stored_before_purposes_are_marketing_and_the_schema_matches_the_models(
    make_database: Callable[..., str],
) -> None:
    engine = create_engine(make_database("gateway_migrations"), application_name="omni-gateway-test")
    try:
        await migrate(engine, MIGRATIONS, "0001")
        async with engine.begin() as connection:
            await connection.execute(
                sa.text(_INSERT.format(columns="", values="")),
                {"id": new_id(), "r": "before-purposes", "p": new_id()},
            )

        await migrate(engine, MIGRATIONS)

        assert await current_revision(engine) == ScriptDirectory.from_config(_config()).get_current_head()
        async with engine.connect() as connection:
            assert await connection.run_sync(schema_differences, Base.metadata) == []
            assert await connection.run_sync(schema_differences, lineage_metadata) == []
            assert await connection.run_sync(schema_differences, idempotency_metadata) == []
            purposes = (await connection.scalars(sa.text("SELECT purpose FROM messages"))).all()
            versions = (
                await connection.scalars(sa.text("SELECT contact_verdict_version FROM messages"))
            ).all()
        assert purposes == [Purpose.MARKETING.value]
        assert versions == [0]  # decided by no particular verdicts: the gateway's own apply
        with pytest.raises(IntegrityError, match="messages_purpose"):
            async with engine.begin() as connection:
                await connection.execute(
                    sa.text(_INSERT.format(columns=", purpose", values=", 'analytics'")),
                    {"id": new_id(), "r": "analytics", "p": new_id()},
                )

        async with engine.begin() as connection:
            await connection.run_sync(lambda c: command.downgrade(_config(c), "base"))
        async with engine.connect() as connection:
            tables = await connection.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
        assert tables <= {"alembic_version"}
    finally:
        await engine.dispose()


async def test_the_fingerprints_stored_before_are_computed_again_as_omni_kit_computes_them(
    make_database: Callable[..., str],
) -> None:
    engine = create_engine(make_database("gateway_fingerprints"), application_name="omni-gateway-test")
    marketing = SendRequest(
        request_id="before-kit",
        person_id=uuid.uuid4(),
        channel=Channel.EMAIL,
        template_id="cart",
        variables={"coupon": "SAVE10", "items": [{"sku": "a", "quantity": 2}], "total": 19.5},
    )
    transactional = replace(marketing, request_id="receipt", variables={}, purpose=Purpose.TRANSACTIONAL)
    try:
        await migrate(engine, MIGRATIONS, "0005")
        async with engine.begin() as connection:
            for request in (marketing, transactional):
                await connection.execute(
                    sa.text(
                        "INSERT INTO messages (id, request_id, fingerprint, person_id, channel, template_id, "
                        "variables, purpose, status) VALUES (:id, :r, :f, :p, 'email', 'cart', "
                        "CAST(:v AS jsonb), :purpose, 'sent')"
                    ),
                    {
                        "id": new_id(),
                        "r": request.request_id,
                        "f": _legacy(request),
                        "p": request.person_id,
                        "v": json.dumps(request.variables),
                        "purpose": request.purpose.value,
                    },
                )

        await migrate(engine, MIGRATIONS)
        stored = await _fingerprints(engine)
        # What a replay of each is compared with now: it matches, and other content does not.
        assert stored == {r.request_id: send_fingerprint(r) for r in (marketing, transactional)}
        assert send_fingerprint(replace(marketing, variables={})) != stored["before-kit"]

        async with engine.begin() as connection:
            await connection.run_sync(lambda c: command.downgrade(_config(c), "0005"))
        stored = await _fingerprints(engine)
        assert stored == {r.request_id: _legacy(r) for r in (marketing, transactional)}
    finally:
        await engine.dispose()


async def _fingerprints(engine: AsyncEngine) -> dict[str, object]:
    async with engine.connect() as connection:
        rows = await connection.execute(sa.text("SELECT request_id, fingerprint FROM messages"))
        return {row.request_id: row.fingerprint for row in rows}


def _legacy(request: SendRequest) -> str:
    """The fingerprint the gateway stored before omni_kit's: SHA-256 (hex) of the content as canonical JSON,
    the purpose only when not marketing."""
    content: dict[str, object] = {
        "person_id": str(request.person_id),
        "channel": request.channel.value,
        "template_id": request.template_id,
        "variables": request.variables,
    }
    if request.purpose != Purpose.MARKETING:
        content["purpose"] = request.purpose.value
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


async def test_templates_and_messages_may_be_for_the_webhook_channel_from_0007(
    make_database: Callable[..., str],
) -> None:
    engine = create_engine(make_database("gateway_webhook_channel"), application_name="omni-gateway-test")
    webhook_message = _INSERT.replace("'email'", "'webhook'").format(columns="", values="")
    try:
        await migrate(engine, MIGRATIONS, "0006")
        with pytest.raises(IntegrityError, match="messages_channel"):
            async with engine.begin() as connection:
                await connection.execute(sa.text(webhook_message), {"id": new_id(), "r": "w", "p": new_id()})

        await migrate(engine, MIGRATIONS, "0007")
        async with engine.begin() as connection:
            await connection.execute(sa.text(webhook_message), {"id": new_id(), "r": "w", "p": new_id()})
            await connection.execute(
                sa.text(
                    "INSERT INTO templates (id, channel, body_text) VALUES ('order-paid', :channel, '{}')"
                ),
                {"channel": Channel.WEBHOOK.value},
            )
            with pytest.raises(IntegrityError, match="messages_channel"):
                async with connection.begin_nested():
                    await connection.execute(
                        sa.text(_INSERT.replace("'email'", "'fax'").format(columns="", values="")),
                        {"id": new_id(), "r": "fax", "p": new_id()},
                    )
    finally:
        await engine.dispose()
