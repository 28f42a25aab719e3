"""The SQL of store messages finds a person's and a till's messages by index, not by reading the table: a till
waits on it."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from omni_gateway.main import MIGRATIONS
from omni_gateway.terminals import store
from omni_kit.db import create_engine, migrate


@pytest.mark.parametrize(
    ("statement", "index"),
    [
        ("_CLAIM", "terminal_messages_waiting"),  # by person: not every open message
        ("_RESUME", "terminal_messages_delivered"),
        ("_LAST_ACK", "terminal_messages_acked"),
        ("_EXPIRE", "terminal_messages_expiry"),
        ("_RELEASE", "terminal_messages_delivered"),
    ],
)
async def test_each_statement_of_a_till_finds_its_rows_by_its_index(
    make_database: Callable[..., str], statement: str, index: str
) -> None:
    engine = create_engine(make_database("gateway_terminal_plans"), application_name="omni-gateway-test")
    try:
        await migrate(engine, MIGRATIONS)
        async with engine.begin() as connection:
            await connection.execute(
                sa.text(
                    "INSERT INTO terminal_messages (message_id, person_id, text, create_time, expires_at, "
                    "delivered_store_id, delivered_terminal_id, acked_at) "
                    "SELECT gen_random_uuid(), gen_random_uuid(), 'coupon', now(), now() + interval '1 day', "
                    "'store-' || i % 100, 'till-' || i % 7, CASE WHEN i % 2 = 0 THEN now() END "
                    "FROM generate_series(1, 20000) AS i"
                )
            )
            await connection.execute(sa.text("ANALYZE terminal_messages"))
            plan = await connection.execute(
                sa.text("EXPLAIN " + getattr(store, statement).text),
                {"person": uuid.uuid4(), "store": "store-5", "terminal": "till-3", "limit": 50, "ids": []},
            )
            shown = "\n".join(row[0] for row in plan)
        assert "Seq Scan on terminal_messages" not in shown, shown
        # An index scan or a bitmap index scan on it.
        assert re.search(rf"(using|Index Scan on) {index}\b", shown), shown
    finally:
        await engine.dispose()
