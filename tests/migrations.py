"""How a migrated database's schema differs from a service's models (its own tables only)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection


def schema_differences(connection: Connection, metadata: sa.MetaData) -> list[Any]:
    """What alembic's autogenerate finds between the database and `metadata`, for the tables `metadata`
    declares: the outbox and inbox come from omni_kit's create_bus_tables, and only their presence is the
    service's to check."""
    own = set(metadata.tables)
    differences = compare_metadata(MigrationContext.configure(connection), metadata)
    return [d for d in differences if _table_of(d) in own]


def _table_of(difference: Any) -> str | None:
    """The table a difference reported by compare_metadata is about."""
    item = difference[0] if isinstance(difference, list) else difference
    if item[0] in ("add_table", "remove_table"):
        return str(item[1].name)
    if item[0] in ("add_index", "remove_index"):
        return str(item[1].table.name)
    if item[0] in ("add_column", "remove_column") or item[0].startswith("modify_"):
        return str(item[2])
    return None
