"""The table of due work every service's database holds, and the migration steps that create and drop it."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

jobs_metadata = sa.MetaData()

_COMMENTS = {
    "kind": "What the job does (e.g. gateway.delivery_attempt): the handler that runs it.",
    "key": "Which one within its kind (a message id, a person id): scheduling a kind and key twice is one job.",
    "due_at": "When it is due (moved a lease ahead while a worker runs it); NULL once it failed for good.",
    "claim": "The run that holds the job: set by the worker that claimed it, cleared when it is scheduled anew.",
}


def _columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("kind", sa.Text, primary_key=True, comment=_COMMENTS["kind"]),
        sa.Column("key", sa.Text, primary_key=True, comment=_COMMENTS["key"]),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=True, comment=_COMMENTS["due_at"]),
        sa.Column("payload", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("trace_context", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("claim", sa.Uuid, nullable=True, comment=_COMMENTS["claim"]),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=True),
    ]


jobs_table = sa.Table("scheduled_jobs", jobs_metadata, *_columns())
# Workers claim the earliest due jobs of a kind: an index on kind and due time of waiting jobs only (failed
# jobs have none), so a backlog of one kind is never scanned to find another's.
sa.Index(
    "scheduled_jobs_due",
    jobs_table.c.kind,
    jobs_table.c.due_at,
    postgresql_where=jobs_table.c.due_at.is_not(None),
)


def create_jobs_table(op: Any) -> None:
    """Create scheduled_jobs in a service's migration (op is alembic.op)."""
    op.create_table("scheduled_jobs", *_columns())
    op.create_index(
        "scheduled_jobs_due",
        "scheduled_jobs",
        ["kind", "due_at"],
        postgresql_where=sa.text("due_at IS NOT NULL"),
    )


def drop_jobs_table(op: Any) -> None:
    """Undo create_jobs_table."""
    op.drop_index("scheduled_jobs_due", table_name="scheduled_jobs")
    op.drop_table("scheduled_jobs")
