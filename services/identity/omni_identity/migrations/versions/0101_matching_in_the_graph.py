"""Matching joined to the identity graph: records keep the person they were filed under and follow merges
and unmerges of the graph; decisions keep the graph's holders of their identifiers and review settlements.

Revision ID: 0101
Revises: 0003
Create Date: 2025-03-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY

revision: str = "0101"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A merge (merged_into set) moves the merged person's records to the live person the merge leads to
# (merges of one statement may form a chain; an AFTER ROW trigger fires once the whole statement is done,
# so the chain is complete when it is followed). An unmerge (merged_into cleared) brings back every record
# filed under the restored person or a person still merged into it. Resolves (repository.py), operator
# merges and unmerges (operator_repository.py) all change persons.merged_into, so all of them are covered.
_FOLLOW_MERGES = """
CREATE FUNCTION person_records_follow_merges() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    live uuid;
BEGIN
    IF NEW.merged_into IS NOT NULL THEN
        WITH RECURSIVE chain(id, merged_into, depth) AS (
            SELECT id, merged_into, 0 FROM persons WHERE id = NEW.merged_into
            UNION ALL
            SELECT p.id, p.merged_into, c.depth + 1 FROM persons AS p JOIN chain AS c ON p.id = c.merged_into
            WHERE c.depth < 10000
        ) SELECT id INTO live FROM chain WHERE merged_into IS NULL;
        UPDATE person_records SET person_id = live WHERE person_id = NEW.id;
    ELSE
        WITH RECURSIVE tree(id, depth) AS (
            SELECT NEW.id, 0
            UNION ALL
            SELECT p.id, t.depth + 1 FROM persons AS p JOIN tree AS t ON p.merged_into = t.id WHERE t.depth < 10000
        ) UPDATE person_records SET person_id = NEW.id WHERE filed_under IN (SELECT id FROM tree);
    END IF;
    RETURN NULL;
END
$$
"""

_TRIGGER = (
    "CREATE TRIGGER person_records_follow_merges AFTER UPDATE OF merged_into ON persons FOR EACH ROW"
    " WHEN (OLD.merged_into IS DISTINCT FROM NEW.merged_into) EXECUTE FUNCTION person_records_follow_merges()"
)


def upgrade() -> None:
    """Add filed_under, the decisions' holders and settlements, the open-review index and the trigger."""
    op.add_column(
        "person_records",
        sa.Column(
            "filed_under",
            sa.Uuid,
            nullable=True,
            comment="The person the record was filed under; its merged_into chain leads to person_id.",
        ),
    )
    op.execute("UPDATE person_records SET filed_under = person_id")
    op.alter_column("person_records", "filed_under", nullable=False)
    op.create_index("person_records_filed_under", "person_records", ["filed_under"])
    # Records filed before the matcher created persons in the graph name ids the graph never had: make them
    # persons (without identifiers and without a person_created event), so every record's person exists.
    op.execute(
        "INSERT INTO persons (id, created_at)"
        " SELECT r.person_id, min(r.created_at) FROM person_records AS r"
        " WHERE NOT EXISTS (SELECT 1 FROM persons AS p WHERE p.id = r.person_id) GROUP BY r.person_id"
    )
    op.add_column(
        "match_decisions",
        sa.Column(
            "identifier_person_ids",
            ARRAY(sa.Uuid),
            nullable=False,
            server_default="{}",
            comment="The persons of the graph holding the record's identifiers when it was decided.",
        ),
    )
    op.add_column(
        "match_decisions",
        sa.Column(
            "settles_decision_id",
            sa.Uuid,
            nullable=True,
            comment="For a decision made by settling a review: the review.",
        ),
    )
    op.add_column(
        "match_decisions",
        sa.Column(
            "settled_at", sa.DateTime(timezone=True), nullable=True, comment="When a review was settled."
        ),
    )
    op.add_column("match_decisions", sa.Column("settled_by", sa.Text, nullable=False, server_default=""))
    op.add_column("match_decisions", sa.Column("settle_reason", sa.Text, nullable=False, server_default=""))
    op.add_column(
        "match_decisions",
        sa.Column(
            "settled_decision_id",
            sa.Uuid,
            nullable=True,
            comment="For a settled review: the decision that filed its record.",
        ),
    )
    op.add_column(
        "match_decisions",
        sa.Column(
            "settled_outcome",
            sa.Text,
            nullable=False,
            server_default="",
            comment="For a settled review: link or new_person.",
        ),
    )
    op.add_column(
        "match_decisions",
        sa.Column(
            "settled_person_id",
            sa.Uuid,
            nullable=True,
            comment="For a settled review: the person its record was filed under.",
        ),
    )
    op.create_index(
        "match_decisions_open_reviews",
        "match_decisions",
        ["id"],
        postgresql_where=sa.text("decision = 'review' AND settled_at IS NULL"),
    )
    op.execute(_FOLLOW_MERGES)
    op.execute(_TRIGGER)


def downgrade() -> None:
    """Drop what upgrade added (the persons made for old records stay: they may hold identifiers by now)."""
    op.execute("DROP TRIGGER person_records_follow_merges ON persons")
    op.execute("DROP FUNCTION person_records_follow_merges()")
    op.drop_index("match_decisions_open_reviews", table_name="match_decisions")
    for column in (
        "settled_person_id",
        "settled_outcome",
        "settled_decision_id",
        "settle_reason",
        "settled_by",
        "settled_at",
        "settles_decision_id",
        "identifier_person_ids",
    ):
        op.drop_column("match_decisions", column)
    op.drop_index("person_records_filed_under", table_name="person_records")
    op.drop_column("person_records", "filed_under")
