"""Identity rules, unmerge and erasure: identifier lineage, refused links, tombstones, audit, operations.

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, BYTEA

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add identifier lineage, merge rules and undo, refused links, tombstones, erasures and operations."""
    op.add_column(
        "persons",
        sa.Column(
            "forgotten_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="When the person was erased (ForgetPerson).",
        ),
    )

    op.add_column(
        "identifiers",
        sa.Column("id", sa.Uuid, nullable=True, comment="UUIDv7: sorts by attach time."),
    )
    op.add_column(
        "identifiers",
        sa.Column(
            "attached_to",
            sa.Uuid,
            nullable=True,
            comment="The person it was attached (or split back) to; its merged_into chain leads to person_id.",
        ),
    )
    op.add_column(
        "identifiers",
        sa.Column(
            "via",
            ARRAY(sa.Uuid),
            nullable=True,
            comment="Ids of the identifiers the attaching resolve matched.",
        ),
    )
    op.add_column(
        "identifiers",
        sa.Column(
            "attachment",
            sa.Text,
            nullable=True,
            comment="new_person, matched or unmerge: how it came to attached_to.",
        ),
    )
    # Identifiers stored before lineage was kept: their first person is unknown, their holder is the best guess.
    op.execute(
        "UPDATE identifiers SET id = gen_random_uuid(), attached_to = person_id, attachment = 'new_person'"
    )
    for column in ("id", "attached_to", "attachment"):
        op.alter_column("identifiers", column, nullable=False)
    op.drop_index("identifiers_person_id", table_name="identifiers")
    op.create_index("identifiers_person_id", "identifiers", ["person_id", "id"])

    op.add_column(
        "merges",
        sa.Column(
            "rule",
            sa.Text,
            nullable=False,
            server_default="shared_identifiers",
            comment="shared_identifiers or operator.",
        ),
    )
    op.add_column("merges", sa.Column("reason", sa.Text, nullable=False, server_default=""))
    op.add_column(
        "merges",
        sa.Column(
            "undone_at", sa.DateTime(timezone=True), nullable=True, comment="When an unmerge undid the merge."
        ),
    )
    op.add_column("merges", sa.Column("undo_reason", sa.Text, nullable=False, server_default=""))
    op.create_index(
        "merges_cause_identifiers",
        "merges",
        ["cause_identifiers"],
        postgresql_using="gin",
        postgresql_ops={"cause_identifiers": "jsonb_path_ops"},
    )

    op.create_table(
        "refused_links",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("holder_id", sa.Uuid, nullable=True),
        sa.Column(
            "person_ids",
            ARRAY(sa.Uuid),
            nullable=False,
            comment="Every person involved: for listing by person.",
        ),
        sa.Column("resolved_person_id", sa.Uuid, nullable=False),
        sa.Column("rule", sa.Text, nullable=False),
        sa.Column("rule_type", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("refused_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_refused_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("count", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "refused_links_refusal",
        "refused_links",
        ["type", "value", "resolved_person_id", "rule", "rule_type"],
        unique=True,
    )
    op.create_index("refused_links_person_ids", "refused_links", ["person_ids"], postgresql_using="gin")

    op.create_table(
        "tombstones",
        sa.Column("hash", BYTEA, primary_key=True, comment="HMAC-SHA256 of type and value."),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("erasure_id", sa.Uuid, nullable=False),
        sa.Column("forgotten_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "erasures",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("person_id", sa.Uuid, nullable=False, comment="The live person erased."),
        sa.Column(
            "person_ids", ARRAY(sa.Uuid), nullable=False, comment="It and every person merged into it."
        ),
        sa.Column("requested_by", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("request_id", sa.Text, nullable=False),
        sa.Column("identifier_count", sa.Integer, nullable=False),
        sa.Column("forgotten_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("erasures_person_id", "erasures", ["person_id"])
    op.create_table(
        "operations",
        sa.Column("request_id", sa.Text, primary_key=True),
        sa.Column("kind", sa.Text, nullable=False, comment="merge, unmerge or forget."),
        sa.Column("fingerprint", BYTEA, nullable=False, comment="SHA-256 of the request."),
        sa.Column("response", BYTEA, nullable=False, comment="The serialized response."),
        sa.Column(
            "person_ids",
            ARRAY(sa.Uuid),
            nullable=False,
            comment="The persons it concerned (answers are removed on erasure).",
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    """Drop what upgrade added (identifier lineage, refusals, tombstones and the audit are lost)."""
    op.drop_table("operations")
    op.drop_index("erasures_person_id", table_name="erasures")
    op.drop_table("erasures")
    op.drop_table("tombstones")
    op.drop_index("refused_links_person_ids", table_name="refused_links")
    op.drop_index("refused_links_refusal", table_name="refused_links")
    op.drop_table("refused_links")
    op.drop_index("merges_cause_identifiers", table_name="merges")
    for column in ("undo_reason", "undone_at", "reason", "rule"):
        op.drop_column("merges", column)
    op.drop_index("identifiers_person_id", table_name="identifiers")
    op.create_index("identifiers_person_id", "identifiers", ["person_id"])
    for column in ("attachment", "via", "attached_to", "id"):
        op.drop_column("identifiers", column)
    op.drop_column("persons", "forgotten_at")
