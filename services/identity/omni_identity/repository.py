"""All SQL of the identity service: locks, reads and the bulk writes of a resolved batch.

Concurrency rests on two kinds of locks, always taken in the same order so that resolves never deadlock:
1. a transaction-scoped advisory lock per identifier (a stable 64-bit hash of type and value), all of them
   up front, in ascending key order: whoever holds it alone may create or re-point that identifier;
2. then, in one statement and in ascending id order, a row lock on every live person the identifiers lead
   to, so that no one adds identifiers to a person while it is being merged away.
Nothing ever waits for an advisory lock while holding a person lock, so the wait-for graph has no cycles.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from omni_identity.models import Identifier, Merge, Person
from omni_identity.normalise import IdentifierKey
from omni_identity.resolution import GraphChanges


def identifier_lock_key(key: IdentifierKey) -> int:
    """A stable signed 64-bit advisory-lock key for an identifier (the same in every process and release)."""
    digest = hashlib.blake2b(f"{key.type}\x00{key.value}".encode(), digest_size=8, person=b"omni-id").digest()
    return int.from_bytes(digest, "big", signed=True)


@dataclass(frozen=True)
class PersonRow:
    """A person as stored."""

    id: uuid.UUID
    created_at: datetime
    merged_into: uuid.UUID | None


_LOCK_IDENTIFIERS = sa.text("SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:keys AS bigint[])) AS t(k)")

_HOLDERS = sa.text(
    "SELECT i.type, i.value, i.person_id FROM identifiers AS i"
    " JOIN unnest(CAST(:types AS text[]), CAST(:values AS text[])) AS k(type, value)"
    " ON i.type = k.type AND i.value = k.value"
)

# ORDER BY is applied before FOR UPDATE locks the rows, so the locks are taken in id order.
_LOCK_PERSONS = sa.text(
    "SELECT id, merged_into FROM persons WHERE id = ANY(CAST(:ids AS uuid[])) ORDER BY id FOR NO KEY UPDATE"
)

_SURVIVOR = sa.text(
    "WITH RECURSIVE chain(id, merged_into, depth) AS ("
    " SELECT id, merged_into, 0 FROM persons WHERE id = :id"
    " UNION ALL"
    " SELECT p.id, p.merged_into, c.depth + 1 FROM persons AS p JOIN chain AS c ON p.id = c.merged_into"
    " WHERE c.depth < 1000)"
    " SELECT p.id, p.created_at, p.merged_into FROM chain AS c JOIN persons AS p ON p.id = c.id"
    " WHERE c.merged_into IS NULL"
)

_MERGED_INTO = sa.text(
    "WITH RECURSIVE tree(id, depth) AS ("
    " SELECT id, 0 FROM persons WHERE merged_into = :id"
    " UNION ALL"
    " SELECT p.id, t.depth + 1 FROM persons AS p JOIN tree AS t ON p.merged_into = t.id WHERE t.depth < 1000)"
    " SELECT id FROM tree ORDER BY id"
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
        """The person holding each of the identifiers that are known."""
        if not keys:
            return {}
        result = await self.session.execute(
            _HOLDERS, {"types": [k.type for k in keys], "values": [k.value for k in keys]}
        )
        return {IdentifierKey(row.type, row.value): row.person_id for row in result}

    async def lock_holders(
        self, keys: Sequence[IdentifierKey], *, max_rounds: int = 50
    ) -> dict[IdentifierKey, uuid.UUID]:
        """The holders of the (already advisory-locked) identifiers, each row-locked and live.

        A holder read before its row lock may have been merged away by a transaction that committed in
        between. Then the row locks of that round are released (rolled back to a savepoint, so no one waits
        behind a lock on a dead person while we take the next ones) and the holders are read again. Merges
        only ever retire persons, so the rounds end.
        """
        for _ in range(max_rounds):
            holders = await self.holders(keys)
            if not holders:
                return holders
            savepoint = await self.session.begin_nested()
            gone = await self.lock_persons(holders.values())
            if not gone:
                await savepoint.commit()
                return holders
            await savepoint.rollback()
        raise RuntimeError(f"identifier holders kept changing over {max_rounds} rounds")

    async def lock_persons(self, person_ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
        """Row-lock the persons in id order; return those among them that have been merged away meanwhile."""
        ids = sorted(set(person_ids))
        if not ids:
            return set()
        result = await self.session.execute(_LOCK_PERSONS, {"ids": ids})
        rows = result.all()
        found = {row.id for row in rows}
        return {row.id for row in rows if row.merged_into is not None} | (set(ids) - found)

    async def apply(self, changes: GraphChanges) -> None:
        """Write a resolved batch: new persons, new identifiers, merges and moved identifiers."""
        now = changes.now
        if changes.created_person_ids:
            await self.session.execute(
                sa.insert(Person),
                [{"id": pid, "created_at": now} for pid in changes.created_person_ids],
            )
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
            await self.session.execute(
                sa.insert(Identifier),
                [
                    {
                        "type": new.key.type,
                        "value": new.key.value,
                        "person_id": new.person_id,
                        "source": new.source,
                        "created_at": now,
                    }
                    for new in changes.new_identifiers
                ],
            )
        if changes.merges:
            await self.session.execute(
                sa.insert(Merge),
                [
                    {
                        "id": merge.id,
                        "survivor_id": merge.survivor_id,
                        "merged_id": merge.merged_id,
                        "cause_identifiers": [
                            {"type": k.type, "value": k.value} for k in merge.cause_identifiers
                        ],
                        "source": merge.source,
                        "merged_at": merge.merged_at,
                    }
                    for merge in changes.merges
                ],
            )

    async def live_person(self, person_id: uuid.UUID) -> PersonRow | None:
        """The live person person_id leads to (itself, or the survivor it was merged into), if it exists."""
        row = (await self.session.execute(_SURVIVOR, {"id": person_id})).first()
        if row is None:
            return None
        return PersonRow(row.id, row.created_at, row.merged_into)

    async def identifiers_of(self, person_id: uuid.UUID) -> list[IdentifierKey]:
        """The identifiers a person holds, oldest first."""
        result = await self.session.execute(
            sa.select(Identifier.type, Identifier.value)
            .where(Identifier.person_id == person_id)
            .order_by(Identifier.created_at, Identifier.type, Identifier.value)
        )
        return [IdentifierKey(row.type, row.value) for row in result]

    async def merged_person_ids(self, person_id: uuid.UUID) -> list[uuid.UUID]:
        """Every person merged into this one, directly or through earlier merges."""
        result = await self.session.execute(_MERGED_INTO, {"id": person_id})
        return [row.id for row in result]

    async def holder(self, key: IdentifierKey) -> uuid.UUID | None:
        """The person holding one identifier, if any."""
        result = await self.session.execute(
            sa.select(Identifier.person_id).where(Identifier.type == key.type, Identifier.value == key.value)
        )
        return result.scalar_one_or_none()

    async def merges_of(self, person_id: uuid.UUID) -> list[Merge]:
        """The merge records whose survivor is this person, oldest first."""
        result = await self.session.execute(
            sa.select(Merge).where(Merge.survivor_id == person_id).order_by(Merge.merged_at, Merge.id)
        )
        return list(result.scalars())
