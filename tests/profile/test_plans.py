"""A merge moves the merged persons' events by the person index, however big the timeline table.

This is what a growing table looks like to the planner: statistics taken when it was small and unlike its
later self (a few persons with many events), then many more rows; and what a prepared statement runs after
its first executions: the generic plan. (The test fails with the move as it was, a join alone, which was
planned as a hash join against a sequential scan of every event.)
"""

from __future__ import annotations

import sqlalchemy as sa

from omni_profile.repository import events

from ..plans import generic_plan
from .support import Services

_EVENTS = (
    "INSERT INTO events (source, id, person_id, type, occurred_at, received_at, identifiers)"
    " SELECT 'test', 'e-' || p.id || '-' || n, p.id, 'page_viewed', now(), now(), '[]'::jsonb"
    " FROM (SELECT gen_random_uuid() AS id FROM generate_series(1, :persons)) AS p"
    " CROSS JOIN generate_series(1, :each) AS n"
)


async def test_a_merge_moves_events_by_the_person_index(services: Services) -> None:
    async with services.database.begin() as connection:
        await connection.execute(sa.text("ALTER TABLE events SET (autovacuum_enabled = off)"))
        await connection.execute(sa.text(_EVENTS), {"persons": 10, "each": 100})
    async with services.database.connect() as connection:
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        await connection.execute(sa.text("ANALYZE events"))
    async with services.database.begin() as connection:
        await connection.execute(sa.text(_EVENTS), {"persons": 25_000, "each": 4})

    plan = await generic_plan(services.database, str(events.MOVE_EVENTS))

    assert "Seq Scan on events" not in plan, plan
