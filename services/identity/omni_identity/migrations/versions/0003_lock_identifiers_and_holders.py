"""Resolve's locks in one call: the identifiers' advisory locks, then their holders read and row-locked.

Revision ID: 0003
Revises: 0100
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0100"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Two statements in a VOLATILE PL/pgSQL function: each takes its own snapshot, so the read starts after
# every advisory lock is held and sees whatever their previous holders committed (as two statements sent
# one after the other would), in one round trip. The read is the one repository.py describes.
_CREATE = """
CREATE FUNCTION identity_lock_holders(lock_keys bigint[], types text[], vals text[], hashes bytea[])
RETURNS TABLE (type text, value text, id uuid, person_id uuid, merged_into uuid, forgotten_at timestamptz,
               hash bytea)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
BEGIN
    PERFORM pg_advisory_xact_lock(k) FROM unnest(lock_keys) AS t(k);
    RETURN QUERY
    WITH locked AS (
        SELECT i.type, i.value, i.id, p.id AS person_id, p.merged_into, p.forgotten_at
        FROM identifiers AS i
        JOIN unnest(types, vals) AS k(type, value) ON i.type = k.type AND i.value = k.value
        JOIN persons AS p ON p.id = i.person_id
        ORDER BY p.id FOR NO KEY UPDATE OF p
    )
    SELECT l.type, l.value, l.id, l.person_id, l.merged_into, l.forgotten_at, NULL::bytea FROM locked AS l
    UNION ALL
    SELECT NULL, NULL, NULL, NULL, NULL, NULL, t.hash FROM tombstones AS t WHERE t.hash = ANY(hashes);
END
$$
"""


def upgrade() -> None:
    """Create identity_lock_holders."""
    op.execute(_CREATE)


def downgrade() -> None:
    """Drop identity_lock_holders."""
    op.execute("DROP FUNCTION identity_lock_holders(bigint[], text[], text[], bytea[])")
