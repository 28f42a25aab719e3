"""What the event-log tests share."""

from __future__ import annotations

import sqlalchemy as sa

test_metadata = sa.MetaData()
notes = sa.Table(
    "notes",
    test_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("text", sa.Text, nullable=False),
)
"""A state change for handlers to write, so tests see what was applied and what rolled back."""
