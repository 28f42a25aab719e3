"""The resolve path's statements reach a person's identifiers by the person index, however big the graph.

Both were once planned against the whole identifiers table: the counts read as an intersection with an
index scan of every identifier of each watched type, the move of a merged person's identifiers as a hash
join against a sequential scan. Their cost grew with the graph. This is what a growing graph looks like to
the planner: statistics taken when the table was small and unlike its later self, then many more rows; and
what a service's prepared statements run after their first executions: the generic plan. (Both tests fail
with the statements as they were.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa

from omni_identity import repository
from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres

from ..plans import generic_plan
from .conftest import running_identity
from .support import Identity

# A few persons holding many identifiers each, of many types: when the statistics are taken, person_id looks
# like a column of a handful of values each matching a large share of the table, and each type a rare one.
_FEW_BUSY = (
    "WITH p AS (INSERT INTO persons (id, created_at) SELECT gen_random_uuid(), now()"
    " FROM generate_series(1, 20) RETURNING id)"
    " INSERT INTO identifiers (type, value, person_id, source, created_at, id, attached_to, attachment)"
    " SELECT 'type-' || n, 'v-' || n || '-' || p.id, p.id, 'test', now(), gen_random_uuid(), p.id,"
    " 'new_person'"
    " FROM p CROSS JOIN generate_series(1, 200) AS n"
)
_SEED = (
    "WITH p AS (INSERT INTO persons (id, created_at) SELECT gen_random_uuid(), now()"
    " FROM generate_series(1, :n) RETURNING id)"
    " INSERT INTO identifiers (type, value, person_id, source, created_at, id, attached_to, attachment)"
    " SELECT t.type, t.type || '-' || p.id, p.id, 'test', now(), gen_random_uuid(), p.id, 'new_person'"
    " FROM p CROSS JOIN unnest(ARRAY['email', 'device_id', 'anonymous_id', 'user_id']) AS t(type)"
)


@pytest.fixture(scope="module")
async def grown(postgres: EmbeddedPostgres, nats_server: EmbeddedNats) -> AsyncIterator[Identity]:
    """Identity on a database whose graph grew a hundredfold since its statistics were taken."""
    async with running_identity(postgres, nats_server) as running:
        async with running.runtime.engine.begin() as connection:
            await connection.execute(sa.text("ALTER TABLE identifiers SET (autovacuum_enabled = off)"))
            await connection.execute(sa.text(_FEW_BUSY))
        async with running.runtime.engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.execute(sa.text("ANALYZE identifiers"))
        async with running.runtime.engine.begin() as connection:
            await connection.execute(sa.text(_SEED), {"n": 30_000})
        yield running


async def test_the_counts_are_read_by_the_person_index(grown: Identity) -> None:
    plan = await generic_plan(grown.runtime.engine, repository._TALLIES)

    assert "identifiers_person_id" in plan, plan
    assert "identifiers_pkey" not in plan, plan
    assert "Seq Scan on identifiers" not in plan, plan


async def test_a_merged_persons_identifiers_are_moved_by_the_person_index(grown: Identity) -> None:
    plan = await generic_plan(grown.runtime.engine, repository._APPLY)

    assert "Seq Scan on identifiers" not in plan, plan
