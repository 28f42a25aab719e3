"""All SQL of the identity service: locks, reads and the bulk writes of a resolved batch.

Concurrency rests on two kinds of locks, always taken in the same order so that resolves never deadlock:
1. a transaction-scoped advisory lock per identifier (a stable 64-bit hash of type and value), all of them
   up front, in ascending key order: whoever holds it alone may create or re-point that identifier;
2. then, in the one statement that reads who holds them, a row lock on every person holding one, in
   ascending id order, so that no one adds identifiers to a person while it is being merged away.
Nothing ever waits for an advisory lock while holding a person lock, so the wait-for graph has no cycles.
If a holder turns out to have been merged away between the two steps (its row lock waited for the merge
to commit), the transaction is started again (ConcurrentMerge) rather than holding a lock on a dead person
while waiting for more, which could deadlock with a reader in the same position.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from omni_identity.merge import MergeRecord
from omni_identity.models import Merge
from omni_identity.normalise import IdentifierKey
from omni_identity.resolution import GraphChanges


def identifier_lock_key(key: IdentifierKey) -> int:
    """A stable signed 64-bit advisory-lock key for an identifier (the same in every process and release)."""
    digest = hashlib.blake2b(f"{key.type}\x00{key.value}".encode(), digest_size=8, person=b"omni-id").digest()
    return int.from_bytes(digest, "big", signed=True)


class ConcurrentMerge(Exception):
    """A person the transaction wanted to extend was merged away meanwhile; run the transaction again."""


@dataclass(frozen=True)
class PersonRecord:
    """A live person as read in one consistent statement: identifiers oldest first, merged ids sorted."""

    id: uuid.UUID
    created_at: datetime
    identifiers: list[IdentifierKey]
    merged_person_ids: list[uuid.UUID]


_LOCK_IDENTIFIERS = sa.text("SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:keys AS bigint[])) AS t(k)")

_MATCHES = (
    " FROM identifiers AS i"
    " JOIN unnest(CAST(:types AS text[]), CAST(:values AS text[])) AS k(type, value)"
    " ON i.type = k.type AND i.value = k.value"
)

_HOLDERS = sa.text("SELECT i.type, i.value, i.person_id" + _MATCHES)

# ORDER BY is applied before FOR NO KEY UPDATE locks the rows, so the person locks are taken in id order.
# A row updated by a transaction we waited for is returned as it is now, so merged_into shows a merge that
# committed after this statement started. NO KEY UPDATE (not UPDATE) lets foreign-key checks of others pass.
_LOCK_HOLDERS = sa.text(
    "SELECT i.type, i.value, p.id AS person_id, p.merged_into"
    + _MATCHES
    + " JOIN persons AS p ON p.id = i.person_id"
    " ORDER BY p.id FOR NO KEY UPDATE OF p"
)

_PERSON_FROM = """
WITH RECURSIVE chain(id, merged_into, depth) AS (
    SELECT id, merged_into, 0 FROM persons WHERE id = ({start})
    UNION ALL
    SELECT p.id, p.merged_into, c.depth + 1 FROM persons AS p JOIN chain AS c ON p.id = c.merged_into
    WHERE c.depth < 10000
), live AS (
    SELECT p.id, p.created_at FROM chain AS c JOIN persons AS p ON p.id = c.id WHERE c.merged_into IS NULL
), tree(id, depth) AS (
    SELECT p.id, 0 FROM persons AS p JOIN live ON p.merged_into = live.id
    UNION ALL
    SELECT p.id, t.depth + 1 FROM persons AS p JOIN tree AS t ON p.merged_into = t.id WHERE t.depth < 10000
)
SELECT live.id, live.created_at,
    ARRAY(SELECT i.type FROM identifiers AS i WHERE i.person_id = live.id
          ORDER BY i.created_at, i.type, i.value) AS types,
    ARRAY(SELECT i.value FROM identifiers AS i WHERE i.person_id = live.id
          ORDER BY i.created_at, i.type, i.value) AS vals,
    ARRAY(SELECT tree.id FROM tree ORDER BY tree.id) AS merged_ids
FROM live
"""

_PERSON_BY_ID = sa.text(_PERSON_FROM.format(start=":id"))
_PERSON_BY_IDENTIFIER = sa.text(
    _PERSON_FROM.format(start="SELECT person_id FROM identifiers WHERE type = :type AND value = :value")
)

# Bulk writes pass one array per column and unnest them: one statement and one round trip, whatever the size.
_INSERT_PERSONS = sa.text(
    "INSERT INTO persons (id, created_at) SELECT id, :now FROM unnest(CAST(:ids AS uuid[])) AS t(id)"
)

_INSERT_IDENTIFIERS = sa.text(
    "INSERT INTO identifiers (type, value, person_id, source, created_at)"
    " SELECT type, value, person_id, source, :now FROM unnest("
    " CAST(:types AS text[]), CAST(:values AS text[]), CAST(:person_ids AS uuid[]), CAST(:sources AS text[])"
    ") AS t(type, value, person_id, source)"
)

_INSERT_MERGES = sa.text(
    "INSERT INTO merges (id, survivor_id, merged_id, cause_identifiers, source, merged_at)"
    " SELECT id, survivor_id, merged_id, CAST(cause AS jsonb), source, merged_at FROM unnest("
    " CAST(:ids AS uuid[]), CAST(:survivor_ids AS uuid[]), CAST(:merged_ids AS uuid[]),"
    " CAST(:causes AS text[]), CAST(:sources AS text[]), CAST(:merged_ats AS timestamptz[])"
    ") AS t(id, survivor_id, merged_id, cause, source, merged_at)"
)

_MARK_MERGED = sa.text(
    "UPDATE persons SET merged_into = m.into_id, merged_at = :now"
    " FROM unnest(CAST(:ids AS uuid[]), CAST(:into_ids AS uuid[])) AS m(id, into_id)"
    " WHERE persons.id = m.id"
)

_MOVE_IDENTIFIERS = sa.text(
    "UPDATE identifiers SET person_id = m.to_id"
    " FROM unnest(CAST(:from_ids AS uuid[]), CAST(:to_ids AS uuid[])) AS m(from_id, to_id)"
    " WHERE identifiers.person_id = m.from_id"
)


class IdentityRepository:
    """Reads and writes the identity graph within the caller's transaction."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def lock_identifiers(self, keys: Iterable[IdentifierKey]) -> None:
        """Take the advisory lock of every identifier, in ascending key order, until the transaction ends."""
        lock_keys = sorted({identifier_lock_key(key) for key in keys})
        if lock_keys:
            await self.session.execute(_LOCK_IDENTIFIERS, {"keys": lock_keys})

    async def holders(self, keys: Sequence[IdentifierKey]) -> dict[IdentifierKey, uuid.UUID]:
        """The person holding each known identifier, read without locks (what was true at one instant)."""
        if not keys:
            return {}
        result = await self.session.execute(_HOLDERS, _key_arrays(keys))
        return {IdentifierKey(row.type, row.value): row.person_id for row in result}

    async def lock_holders(self, keys: Sequence[IdentifierKey]) -> dict[IdentifierKey, uuid.UUID]:
        """The holders of the (already advisory-locked) identifiers, each row-locked until the transaction ends.

        Raises ConcurrentMerge when a holder was merged away after the identifiers were locked.
        """
        if not keys:
            return {}
        result = await self.session.execute(_LOCK_HOLDERS, _key_arrays(keys))
        holders = {}
        for row in result:
            if row.merged_into is not None:
                raise ConcurrentMerge(f"person {row.person_id} was merged into {row.merged_into}")
            holders[IdentifierKey(row.type, row.value)] = row.person_id
        return holders

    async def apply(self, changes: GraphChanges) -> None:
        """Write a resolved batch: new persons, new identifiers, merges and moved identifiers."""
        now = changes.now
        if changes.created_person_ids:
            await self.session.execute(_INSERT_PERSONS, {"ids": changes.created_person_ids, "now": now})
        if changes.merged_into:
            # After the inserts, so a person created and merged in the same batch exists before it is pointed.
            await self.session.execute(
                _MARK_MERGED,
                {
                    "ids": list(changes.merged_into),
                    "into_ids": list(changes.merged_into.values()),
                    "now": now,
                },
            )
        if changes.moved_identifiers:
            await self.session.execute(
                _MOVE_IDENTIFIERS,
                {
                    "from_ids": list(changes.moved_identifiers),
                    "to_ids": list(changes.moved_identifiers.values()),
                },
            )
        if changes.new_identifiers:
            new = changes.new_identifiers
            await self.session.execute(
                _INSERT_IDENTIFIERS,
                {
                    "types": [n.key.type for n in new],
                    "values": [n.key.value for n in new],
                    "person_ids": [n.person_id for n in new],
                    "sources": [n.source for n in new],
                    "now": now,
                },
            )
        if changes.merges:
            merges = changes.merges
            await self.session.execute(
                _INSERT_MERGES,
                {
                    "ids": [m.id for m in merges],
                    "survivor_ids": [m.survivor_id for m in merges],
                    "merged_ids": [m.merged_id for m in merges],
                    "causes": [
                        json.dumps([{"type": k.type, "value": k.value} for k in m.cause_identifiers])
                        for m in merges
                    ],
                    "sources": [m.source for m in merges],
                    "merged_ats": [m.merged_at for m in merges],
                },
            )

    async def person(self, person_id: uuid.UUID) -> PersonRecord | None:
        """The live person an id leads to (itself, or the survivor it was merged into), if the id exists."""
        return _person_record((await self.session.execute(_PERSON_BY_ID, {"id": person_id})).first())

    async def person_holding(self, key: IdentifierKey) -> PersonRecord | None:
        """The person holding one identifier, if any."""
        result = await self.session.execute(_PERSON_BY_IDENTIFIER, {"type": key.type, "value": key.value})
        return _person_record(result.first())

    async def merges_into(
        self, survivor_ids: Sequence[uuid.UUID], *, after: uuid.UUID | None, limit: int
    ) -> list[MergeRecord]:
        """The merges whose survivor is one of these persons, in id (time) order, after a given merge id."""
        query = sa.select(Merge).where(Merge.survivor_id.in_(survivor_ids)).order_by(Merge.id).limit(limit)
        if after is not None:
            query = query.where(Merge.id > after)
        result = await self.session.execute(query)
        return [
            MergeRecord(
                id=merge.id,
                survivor_id=merge.survivor_id,
                merged_id=merge.merged_id,
                cause_identifiers=tuple(
                    IdentifierKey(k["type"], k["value"]) for k in merge.cause_identifiers
                ),
                source=merge.source,
                merged_at=merge.merged_at,
            )
            for merge in result.scalars()
        ]


def _key_arrays(keys: Sequence[IdentifierKey]) -> dict[str, list[str]]:
    return {"types": [k.type for k in keys], "values": [k.value for k in keys]}


def _person_record(row: sa.Row[Any] | None) -> PersonRecord | None:
    if row is None:
        return None
    return PersonRecord(
        id=row.id,
        created_at=row.created_at,
        identifiers=[IdentifierKey(t, v) for t, v in zip(row.types, row.vals, strict=True)],
        merged_person_ids=list(row.merged_ids),
    )
