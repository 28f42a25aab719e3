"""The learning end of decisioning: candidates and propensities in the decision log, outcomes, the learned
counts behind each offer's Beta posterior, and the learning policies of touchpoints.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Add the decision log's candidates and policy; create outcomes, outcome_counts, learning_policies and
    learning_state."""
    # [[offer_id, score, rank, propensity, rank_propensity, chosen], ...] of the eligible offers; compact
    # arrays, since a row is written for every decision.
    op.add_column("decisions", sa.Column("candidates", JSONB, nullable=False, server_default="[]"))
    op.add_column("decisions", sa.Column("policy", sa.Text, nullable=False, server_default="priority"))
    op.add_column("decisions", sa.Column("model_version", sa.BigInteger, nullable=False, server_default="0"))
    op.create_index("ix_decisions_touchpoint_create_time", "decisions", ["touchpoint", "create_time"])
    op.create_table(
        "outcomes",
        sa.Column("outcome_id", sa.Text, primary_key=True),
        sa.Column("decision_id", sa.Uuid, nullable=False),
        sa.Column("offer_id", sa.Uuid, nullable=False),
        sa.Column("type", sa.SmallInteger, nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("occur_time", _TS, nullable=False),
        sa.Column("create_time", _TS, nullable=False),
    )
    op.create_index("ix_outcomes_decision_id", "outcomes", ["decision_id"])
    # What the posteriors are made of, per offer and touchpoint: kept as counts (not alpha/beta) so a policy's
    # prior can change without replaying outcomes.
    op.create_table(
        "outcome_counts",
        sa.Column("offer_id", sa.Uuid, primary_key=True),
        sa.Column("touchpoint", sa.Text, primary_key=True),
        sa.Column("impressions", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("clicks", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("conversions", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("value", sa.Float, nullable=False, server_default="0"),
    )
    op.create_table(
        "learning_policies",
        sa.Column("touchpoint", sa.Text, primary_key=True),
        sa.Column("policy", JSONB, nullable=False),
        sa.Column("update_time", _TS, nullable=False),
    )
    # One row: raised with every change of a learning policy, read by Decide with each group like the offer
    # catalogue's version.
    op.create_table(
        "learning_state",
        sa.Column("id", sa.SmallInteger, primary_key=True, server_default="1"),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.CheckConstraint("id = 1", name="learning_state_one_row"),
    )
    op.execute("INSERT INTO learning_state (id, version) VALUES (1, 0)")


def downgrade() -> None:
    """Drop what upgrade made."""
    op.drop_table("learning_state")
    op.drop_table("learning_policies")
    op.drop_table("outcome_counts")
    op.drop_table("outcomes")
    op.drop_index("ix_decisions_touchpoint_create_time", table_name="decisions")
    op.drop_column("decisions", "model_version")
    op.drop_column("decisions", "policy")
    op.drop_column("decisions", "candidates")
