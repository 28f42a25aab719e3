"""Where a service keeps identity's lineage: one row per person id it heard of as merged or forgotten.

A row says where the id leads now (`survivor_id`, the live person it was merged into; merges flatten chains,
so it is always one hop) and whether the person was forgotten (`forgotten_at`, a tombstone: a late event
naming the id finds it and cannot bring the person back). An id without a row leads to itself.

Most services keep it in `person_lineage`, created by their migrations with `create_lineage_table` (from the
merge aliases they kept before with `lineage_from_aliases`). A service whose per-person row is also the lock
its writes take (profile) keeps the same three facts as columns of that row, so that the statement locking a
person reads where it leads in the row version it locked: `LineageTable` names the columns either way.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

lineage_metadata = sa.MetaData()

_SURVIVOR_COMMENT = "The live person this id leads to since a merge (one hop); NULL when it leads to itself."
_FORGOTTEN_COMMENT = "When identity forgot the person: a tombstone, so later events cannot bring it back."

person_lineage = sa.Table(
    "person_lineage",
    lineage_metadata,
    sa.Column("person_id", sa.Uuid, primary_key=True),
    sa.Column("survivor_id", sa.Uuid, nullable=True, comment=_SURVIVOR_COMMENT),
    sa.Column("forgotten_at", sa.DateTime(timezone=True), nullable=True, comment=_FORGOTTEN_COMMENT),
    sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)
sa.Index(
    "person_lineage_survivor",
    person_lineage.c.survivor_id,
    postgresql_where=person_lineage.c.survivor_id.is_not(None),
)


@dataclass(frozen=True, slots=True)
class Whereabouts:
    """Where a person id leads now."""

    person_id: uuid.UUID
    """The live person: the survivor it was merged into, or itself."""
    forgotten: bool
    """Whether that person was forgotten."""


def person_lock_key(person_id: uuid.UUID) -> int:
    """The key of a person's transaction-scoped advisory lock: 63 random bits of its UUIDv7 (a signed bigint)."""
    return person_id.int & ((1 << 63) - 1)


_LOCK_KEYS = sa.text("SELECT count(pg_advisory_xact_lock(k)) FROM unnest(CAST(:keys AS bigint[])) AS t(k)")


async def lock_persons(session: AsyncSession, person_ids: Iterable[uuid.UUID]) -> None:
    """Serialise work on these persons until the transaction ends: advisory locks, taken in key order in one
    statement (the keys are locked in the order the array holds them)."""
    keys = sorted({person_lock_key(p) for p in person_ids})
    if keys:
        await session.execute(_LOCK_KEYS, {"keys": keys})


@dataclass(frozen=True)
class LineageTable:
    """The table and columns a service's lineage lives in, and all the SQL on them.

    Statements are text over arrays, built once per table: one statement and a few round trips per batch of
    persons, whatever its size (a merge run of a thousand persons is as cheap as one).
    """

    table: sa.Table
    person_id: sa.Column[Any]
    survivor_id: sa.Column[Any]
    forgotten_at: sa.Column[Any]
    changed_at: sa.Column[Any] | None = None
    """Set to now() by every write, when the table has such a column."""

    async def whereabouts(
        self, session: AsyncSession, person_ids: Iterable[uuid.UUID]
    ) -> dict[uuid.UUID, Whereabouts]:
        """Where each of these ids leads now, in one statement (ids without a row lead to themselves)."""
        ids = list(dict.fromkeys(person_ids))
        if not ids:
            return {}
        found = {p: Whereabouts(p, False) for p in ids}
        for row in await session.execute(self._sql.read, {"ids": ids}):
            found[row.person_id] = Whereabouts(row.survivor_id or row.person_id, row.forgotten)
        return found

    async def current(
        self, session: AsyncSession, person_ids: Iterable[uuid.UUID]
    ) -> dict[uuid.UUID, uuid.UUID]:
        """The live person each of these ids leads to (forgotten or not)."""
        return {p: w.person_id for p, w in (await self.whereabouts(session, person_ids)).items()}

    async def merged_into(self, session: AsyncSession, person_ids: Collection[uuid.UUID]) -> list[uuid.UUID]:
        """The ids that lead to one of these persons."""
        if not person_ids:
            return []
        return list(await session.scalars(self._sql.leading_to, {"ids": list(person_ids)}))

    async def redirect(self, session: AsyncSession, redirects: Mapping[uuid.UUID, uuid.UUID]) -> None:
        """The ids leading to each person of `redirects` (merged → survivor) lead to its survivor."""
        if redirects:
            await session.execute(
                self._sql.redirect, {"merged": list(redirects), "survivors": list(redirects.values())}
            )

    async def lead(self, session: AsyncSession, leads: Mapping[uuid.UUID, uuid.UUID | None]) -> None:
        """Each id leads to the person given (None: to itself); rows written in id order."""
        if leads:
            ids = sorted(leads)
            await session.execute(self._sql.lead, {"ids": ids, "survivors": [leads[i] for i in ids]})

    async def tombstone(self, session: AsyncSession, person_ids: Iterable[uuid.UUID]) -> None:
        """Tombstones for these ids (the first time of forgetting kept), leading nowhere else."""
        ids = sorted(set(person_ids))
        if ids:
            await session.execute(self._sql.tombstone, {"ids": ids})

    @functools.cached_property
    def _sql(self) -> _Statements:
        return _Statements.of(self)


@dataclass(frozen=True)
class _Statements:
    read: sa.TextClause
    leading_to: sa.TextClause
    redirect: sa.TextClause
    lead: sa.TextClause
    tombstone: sa.TextClause

    @classmethod
    def of(cls, lineage: LineageTable) -> _Statements:
        # Names come from the service's code (its table definition), never from input.
        table, person, survivor = lineage.table.name, lineage.person_id.name, lineage.survivor_id.name
        forgotten = lineage.forgotten_at.name
        stamp = "" if lineage.changed_at is None else f", {lineage.changed_at.name} = now()"
        return cls(
            # The survivor's row says whether the person it leads to was forgotten.
            read=sa.text(
                f"SELECT t.{person} AS person_id, t.{survivor} AS survivor_id, "
                f"coalesce(s.{forgotten}, t.{forgotten}) IS NOT NULL AS forgotten "
                f"FROM {table} AS t LEFT JOIN {table} AS s ON s.{person} = t.{survivor} "
                f"WHERE t.{person} = ANY(CAST(:ids AS uuid[]))"
            ),
            leading_to=sa.text(f"SELECT {person} FROM {table} WHERE {survivor} = ANY(CAST(:ids AS uuid[]))"),
            redirect=sa.text(
                f"UPDATE {table} AS t SET {survivor} = m.survivor{stamp} "
                "FROM unnest(CAST(:merged AS uuid[]), CAST(:survivors AS uuid[])) AS m(merged, survivor) "
                f"WHERE t.{survivor} = m.merged"
            ),
            lead=sa.text(
                f"INSERT INTO {table} AS t ({person}, {survivor}) "
                "SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:survivors AS uuid[])) "
                f"ON CONFLICT ({person}) DO UPDATE SET {survivor} = excluded.{survivor}{stamp}"
            ),
            tombstone=sa.text(
                f"INSERT INTO {table} AS t ({person}, {forgotten}) "
                "SELECT id, now() FROM unnest(CAST(:ids AS uuid[])) AS u(id) "
                f"ON CONFLICT ({person}) DO UPDATE SET {survivor} = NULL, "
                f"{forgotten} = coalesce(t.{forgotten}, excluded.{forgotten}){stamp}"
            ),
        )


PERSON_LINEAGE = LineageTable(
    person_lineage,
    person_lineage.c.person_id,
    person_lineage.c.survivor_id,
    person_lineage.c.forgotten_at,
    person_lineage.c.changed_at,
)
"""The lineage table most services keep (`person_lineage`)."""


def create_lineage_table(op: Any) -> None:
    """Create person_lineage in a service's migration (op is alembic.op)."""
    op.create_table(
        "person_lineage",
        sa.Column("person_id", sa.Uuid, primary_key=True),
        sa.Column("survivor_id", sa.Uuid, nullable=True, comment=_SURVIVOR_COMMENT),
        sa.Column("forgotten_at", sa.DateTime(timezone=True), nullable=True, comment=_FORGOTTEN_COMMENT),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index(
        "person_lineage_survivor",
        "person_lineage",
        ["survivor_id"],
        postgresql_where=sa.text("survivor_id IS NOT NULL"),
    )


def drop_lineage_table(op: Any) -> None:
    """Undo create_lineage_table."""
    op.drop_index("person_lineage_survivor", table_name="person_lineage")
    op.drop_table("person_lineage")


def lineage_from_aliases(
    op: Any, *, table: str, person_column: str, survivor_column: str, time_column: str | None = None
) -> None:
    """Create person_lineage holding the merge aliases a service kept in a table of its own, then drop that
    table (its own indexes go with it). `time_column`, if given, is when each alias was written."""
    create_lineage_table(op)
    changed = time_column or "now()"
    op.execute(
        f"INSERT INTO person_lineage (person_id, survivor_id, changed_at) "
        f"SELECT {person_column}, {survivor_column}, {changed} FROM {table}"
    )
    op.drop_table(table)


def aliases_from_lineage(
    op: Any, *, table: str, person_column: str, survivor_column: str, time_column: str | None = None
) -> None:
    """Undo lineage_from_aliases: the aliases (not the tombstones) back in a table of the service's own,
    which its downgrade has created."""
    columns = f"{person_column}, {survivor_column}" + (f", {time_column}" if time_column else "")
    values = "person_id, survivor_id" + (", changed_at" if time_column else "")
    op.execute(
        f"INSERT INTO {table} ({columns}) SELECT {values} FROM person_lineage WHERE survivor_id IS NOT NULL"
    )
    drop_lineage_table(op)
