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


async def test_templates_and_messages_may_be_for_the_webhook_channel_from_0008(
    make_database: Callable[..., str],
) -> None:
    engine = create_engine(make_database("gateway_webhook_channel"), application_name="omni-gateway-test")
    webhook_message = _INSERT.replace("'email'", "'webhook'").format(columns="", values="")
    try:
        await migrate(engine, MIGRATIONS, "0007")
        with pytest.raises(IntegrityError, match="messages_channel"):
            async with engine.begin() as connection:
                await connection.execute(sa.text(webhook_message), {"id": new_id(), "r": "w", "p": new_id()})

        await migrate(engine, MIGRATIONS, "0008")
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


async def test_the_templates_stored_before_versions_become_version_1_of_their_channels_variant(
    make_database: Callable[..., str],
) -> None:
    engine = create_engine(make_database("gateway_template_versions"), application_name="omni-gateway-test")
    before = {
        "cart": ("email", "Hi {{ x }}", "Text", "<p>Html</p>"),
        "code": ("sms", "", "Code {{ x }}", ""),
        "ping": ("push", "Title", "Body", ""),
        "till": ("store", "", "Coupon", ""),
        "site": ("web", "Web", "Never sent", ""),
    }
    try:
        await migrate(engine, MIGRATIONS, "0008")
        async with engine.begin() as connection:
            for template_id, (channel, subject, text, html) in before.items():
                await connection.execute(
                    sa.text(
                        "INSERT INTO templates (id, channel, subject, body_text, body_html) "
                        "VALUES (:id, :c, :s, :t, :h)"
                    ),
                    {"id": template_id, "c": channel, "s": subject, "t": text, "h": html},
                )
            await connection.execute(
                sa.text(_INSERT.format(columns="", values="")), {"id": new_id(), "r": "sent", "p": new_id()}
            )
            await connection.execute(
                sa.text(_INSERT.format(columns="", values="").replace("'cart'", "'gone'")),
                {"id": new_id(), "r": "no-template", "p": new_id()},
            )

        await migrate(engine, MIGRATIONS)
        async with engine.connect() as connection:
            variants = {
                row.template_id: (row.version, row.variants)
                for row in await connection.execute(
                    sa.text("SELECT template_id, version, variants FROM template_versions")
                )
            }
            states = {
                row.id: (row.channel, row.version, row.archive_time is not None)
                for row in await connection.execute(
                    sa.text("SELECT id, channel, version, archive_time FROM templates")
                )
            }
            versions = {
                row.request_id: row.template_version
                for row in await connection.execute(
                    sa.text("SELECT request_id, template_version FROM messages")
                )
            }
        assert variants == {
            "cart": (
                1,
                [
                    {
                        "kind": "email",
                        "locale": "",
                        "subject": "Hi {{ x }}",
                        "text": "Text",
                        "html": "<p>Html</p>",
                    }
                ],
            ),
            "code": (1, [{"kind": "sms", "locale": "", "text": "Code {{ x }}"}]),
            "ping": (
                1,
                [
                    {
                        "kind": "push",
                        "locale": "",
                        "title": "Title",
                        "body": "Body",
                        "deep_link": "",
                        "image_url": "",
                    }
                ],
            ),
            "till": (1, [{"kind": "terminal", "locale": "", "text": "Coupon"}]),
            "site": (
                1,
                [{"kind": "email", "locale": "", "subject": "Web", "text": "Never sent", "html": ""}],
            ),
        }
        assert states == {
            "cart": ("email", 1, False),
            "code": ("sms", 1, False),
            "ping": ("push", 1, False),
            "till": ("store", 1, False),
            "site": ("web", 1, True),  # no send could use it, and no variant is for web
        }
        assert versions == {"sent": 1, "no-template": 0}

        async with engine.begin() as connection:
            await connection.execute(
                sa.text(
                    "INSERT INTO template_versions (template_id, version, variants) VALUES ('cart', 2, "
                    "CAST(:v AS jsonb))"
                ),
                {
                    "v": json.dumps(
                        [
                            {"kind": "email", "locale": "de", "subject": "Hallo", "text": "T", "html": ""},
                            {
                                "kind": "email",
                                "locale": "",
                                "subject": "Hi v2",
                                "text": "Text v2",
                                "html": "",
                            },
                        ]
                    )
                },
            )
            await connection.execute(sa.text("UPDATE templates SET version = 2 WHERE id = 'cart'"))
            await connection.run_sync(lambda c: command.downgrade(_config(c), "0008"))
        async with engine.connect() as connection:
            after = {
                row.id: (row.channel, row.subject, row.body_text, row.body_html)
                for row in await connection.execute(
                    sa.text("SELECT id, channel, subject, body_text, body_html FROM templates")
                )
            }
        assert after == {**before, "cart": ("email", "Hi v2", "Text v2", "")}
    finally:
        await engine.dispose()
