"""The segment lifecycle and the marketer's tools: a segment's version, update and archive times; the last
exit of each person from each segment (so "since when is this person out" has an answer); and the event
types and trait names ever seen, which rules naming others are warned about.

Revision ID: 0007
Revises: 0006
Create Date: 2027-03-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("segments", sa.Column("version", sa.BigInteger, nullable=False, server_default="1"))
    op.add_column("segments", sa.Column("updated_at", sa.DateTime(timezone=True)))
    op.add_column("segments", sa.Column("archived_at", sa.DateTime(timezone=True)))
    op.execute("UPDATE segments SET updated_at = created_at")
    op.alter_column("segments", "updated_at", nullable=False)
    op.create_table(
        "segment_exits",
        sa.Column("segment_id", sa.Uuid, sa.ForeignKey("segments.id"), primary_key=True),
        sa.Column("person_id", sa.Uuid, primary_key=True),
        sa.Column("exited_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("segment_exits_person", "segment_exits", ["person_id"])
    op.create_table(
        "seen_names",
        sa.Column("kind", sa.Text, primary_key=True),
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.execute(
        "INSERT INTO seen_names (kind, name) SELECT DISTINCT 'event_type', event_type FROM person_last_events "
        "ON CONFLICT DO NOTHING"
    )
    op.execute(
        "INSERT INTO seen_names (kind, name) SELECT DISTINCT 'trait', k FROM persons, "
        "LATERAL (SELECT jsonb_object_keys(traits) UNION SELECT jsonb_object_keys(computed_traits)) AS t(k) "
        "ON CONFLICT DO NOTHING"
    )


def downgrade() -> None:
    op.drop_table("seen_names")
    op.drop_index("segment_exits_person", table_name="segment_exits")
    op.drop_table("segment_exits")
    op.drop_column("segments", "archived_at")
    op.drop_column("segments", "updated_at")
    op.drop_column("segments", "version")
