"""The SQL of operator changes (merge, unmerge, forget) and of their idempotency.

An operator change locks like a resolve (repository.py): first the advisory lock of every identifier the
persons it changes hold, then those persons' rows in id order. A resolve can only reach a person through
one of its identifiers, so it either finished before or reads the graph after the change. Identifiers
attached between the unlocked read and the locks make the caller run the transaction again.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from omni_identity.erasure import ErasureRecord
from omni_identity.matching.repository import MatchRepository
from omni_identity.merge import MergeRecord
from omni_identity.models import Erasure, Merge
from omni_identity.normalise import IdentifierKey
from omni_identity.reads import merge_record
from omni_identity.unmerge import HeldIdentifier
from omni_kit.idempotency import forget_answers


@dataclass(frozen=True)
class PersonRow:
    """A person's row as locked or read."""

    id: uuid.UUID
    merged_into: uuid.UUID | None
    forgotten_at: datetime | None

    @property
    def live(self) -> bool:
        """Not merged into anyone and not forgotten."""
        return self.merged_into is None and self.forgotten_at is None


@dataclass(frozen=True)
class StoredIdentifier:
    """An identifier a live person holds, with its lineage and attach time."""

    held: HeldIdentifier
    person_id: uuid.UUID
    attached_at: datetime

    @property
    def key(self) -> IdentifierKey:
        """The identifier."""
        return self.held.key


_CHAIN = sa.text(
    "WITH RECURSIVE chain(id, merged_into, forgotten_at, depth) AS ("
    " SELECT id, merged_into, forgotten_at, 0 FROM persons WHERE id = :id"
    " UNION ALL"
    " SELECT p.id, p.merged_into, p.forgotten_at, c.depth + 1 FROM persons AS p"
    " JOIN chain AS c ON p.id = c.merged_into WHERE c.depth < 10000"
    ") SELECT id, merged_into, forgotten_at FROM chain ORDER BY depth"
)

_TREE = sa.text(
    "WITH RECURSIVE tree(id, depth) AS ("
    " SELECT id, 0 FROM persons WHERE merged_into = :id"
    " UNION ALL"
    " SELECT p.id, t.depth + 1 FROM persons AS p JOIN tree AS t ON p.merged_into = t.id WHERE t.depth < 10000"
    ") SELECT id FROM tree ORDER BY id"
)

_HELD_BY = sa.text(
    "SELECT id, type, value, person_id, attached_to, via, created_at FROM identifiers"
    " WHERE person_id = ANY(CAST(:ids AS uuid[])) ORDER BY id"
)

_LOCK_PERSONS = sa.text(
    "SELECT id, merged_into, forgotten_at FROM persons WHERE id = ANY(CAST(:ids AS uuid[]))"
    " ORDER BY id FOR NO KEY UPDATE"
)

_LOCK_IDENTIFIERS = sa.text("SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:keys AS bigint[])) AS t(k)")


class OperatorRepository:
    """Reads and writes of operator changes within the caller's transaction."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def chain(self, person_id: uuid.UUID) -> list[PersonRow]:
        """The person and the persons it was merged into, up to the live (or forgotten) root; [] if unknown."""
        result = await self.session.execute(_CHAIN, {"id": person_id})
        return [PersonRow(row.id, row.merged_into, row.forgotten_at) for row in result]

    async def tree(self, person_id: uuid.UUID) -> list[uuid.UUID]:
        """Every person merged into this one, directly or through others."""
        return list((await self.session.scalars(_TREE, {"id": person_id})).all())

    async def held_by(self, person_ids: Sequence[uuid.UUID]) -> list[StoredIdentifier]:
        """The identifiers these persons hold, in attach order."""
        result = await self.session.execute(_HELD_BY, {"ids": list(person_ids)})
        return [
            StoredIdentifier(
                HeldIdentifier(
                    row.id, IdentifierKey(row.type, row.value), row.attached_to, tuple(row.via or ())
                ),
                row.person_id,
                row.created_at,
            )
            for row in result
        ]

    async def lock_identifiers(self, lock_keys: Iterable[int]) -> None:
        """Take identifier advisory locks (keys from repository.identifier_lock_key), in ascending order."""
        keys = sorted(set(lock_keys))
        if keys:
            await self.session.execute(_LOCK_IDENTIFIERS, {"keys": keys})

    async def lock_persons(self, person_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, PersonRow]:
        """Row-lock the persons in id order and return them as they are now."""
        result = await self.session.execute(_LOCK_PERSONS, {"ids": sorted(set(person_ids))})
        return {row.id: PersonRow(row.id, row.merged_into, row.forgotten_at) for row in result}

    async def active_merge(self, merged_id: uuid.UUID) -> MergeRecord | None:
        """The merge that made this person merged, unless it was undone."""
        query = (
            sa.select(Merge)
            .where(Merge.merged_id == merged_id, Merge.undone_at.is_(None))
            .order_by(Merge.id.desc())
            .limit(1)
        )
        merge = (await self.session.scalars(query)).first()
        return None if merge is None else merge_record(merge)

    async def merge(self, survivor_id: uuid.UUID, merged_id: uuid.UUID, now: datetime) -> None:
        """Point the merged person at the survivor and give the survivor its identifiers."""
        await self.session.execute(
            sa.text("UPDATE persons SET merged_into = :survivor, merged_at = :now WHERE id = :merged"),
            {"survivor": survivor_id, "merged": merged_id, "now": now},
        )
        await self.session.execute(
            sa.text("UPDATE identifiers SET person_id = :survivor WHERE person_id = :merged"),
            {"survivor": survivor_id, "merged": merged_id},
        )

    async def unmerge(
        self,
        merge: MergeRecord,
        holder_id: uuid.UUID,
        came_with: Sequence[uuid.UUID],
        found_through: Sequence[uuid.UUID],
        *,
        now: datetime,
        reason: str,
    ) -> None:
        """Make the merged person live again with its identifiers (taken from holder_id, the live person that
        holds them), and mark its merge undone."""
        restored = merge.merged_id
        await self.session.execute(
            sa.text("UPDATE persons SET merged_into = NULL, merged_at = NULL WHERE id = :id"),
            {"id": restored},
        )
        await self.session.execute(
            sa.text(
                "UPDATE identifiers SET person_id = :restored,"
                " attached_to = CASE WHEN id = ANY(CAST(:through AS uuid[])) THEN :restored ELSE attached_to END,"
                " attachment = CASE WHEN id = ANY(CAST(:through AS uuid[])) THEN 'unmerge' ELSE attachment END"
                " WHERE person_id = :holder AND id = ANY(CAST(:ids AS uuid[]))"
            ),
            {
                "restored": restored,
                "holder": holder_id,
                "ids": [*came_with, *found_through],
                "through": list(found_through),
            },
        )
        await self.session.execute(
            sa.update(Merge).where(Merge.id == merge.id).values(undone_at=now, undo_reason=reason)
        )

    async def forget(
        self,
        erasure: ErasureRecord,
        root_id: uuid.UUID,
        keys: Sequence[IdentifierKey],
        hashes: Sequence[bytes],
    ) -> None:
        """Erase a person: tombstones in, identifiers, lineage, refused links and stored answers out."""
        tree = list(erasure.person_ids)
        now = erasure.forgotten_at
        if hashes:
            await self.session.execute(
                sa.text(
                    "INSERT INTO tombstones (hash, type, erasure_id, forgotten_at)"
                    " SELECT hash, type, :erasure, :now"
                    " FROM unnest(CAST(:hashes AS bytea[]), CAST(:types AS text[])) AS t(hash, type)"
                    " ON CONFLICT (hash) DO NOTHING"
                ),
                {"hashes": list(hashes), "types": [k.type for k in keys], "erasure": erasure.id, "now": now},
            )
        await self.session.execute(sa.text("DELETE FROM identifiers WHERE person_id = :id"), {"id": root_id})
        await self.session.execute(
            sa.text("UPDATE persons SET forgotten_at = :now WHERE id = ANY(CAST(:ids AS uuid[]))"),
            {"ids": tree, "now": now},
        )
        await self.session.execute(
            sa.text(
                "DELETE FROM merges WHERE survivor_id = ANY(CAST(:ids AS uuid[]))"
                " OR merged_id = ANY(CAST(:ids AS uuid[]))"
            ),
            {"ids": tree},
        )
        # Other persons' merges may name the identifiers among their causes: those names go.
        await self.session.execute(
            sa.text(
                "WITH named AS ("
                " SELECT DISTINCT m.id FROM unnest(CAST(:patterns AS jsonb[])) AS k(pattern)"
                " CROSS JOIN LATERAL (SELECT id FROM merges WHERE cause_identifiers @> k.pattern) AS m"
                ") UPDATE merges SET cause_identifiers = COALESCE(("
                " SELECT jsonb_agg(e) FROM jsonb_array_elements(merges.cause_identifiers) AS e"
                " WHERE NOT CAST(jsonb_build_array(e) AS jsonb) <@ CAST(:forgotten AS jsonb)), '[]')"
                " FROM named WHERE merges.id = named.id"
            ),
            {
                "patterns": [json.dumps([{"type": k.type, "value": k.value}]) for k in keys],
                "forgotten": json.dumps([{"type": k.type, "value": k.value} for k in keys]),
            },
        )
        # Refused links name the identifier set aside: those of the person's identifiers go, whoever they
        # involved, and so do all that involved the person.
        await self.session.execute(
            sa.text(
                "DELETE FROM refused_links AS r WHERE r.person_ids && CAST(:ids AS uuid[])"
                " OR (r.type, r.value) IN (SELECT * FROM unnest(CAST(:types AS text[]), CAST(:vals AS text[])))"
            ),
            {"ids": tree, "types": [k.type for k in keys], "vals": [k.value for k in keys]},
        )
        await forget_answers(self.session, tree)
        # The matcher's records filed under these persons hold names, addresses and dates of birth.
        records = MatchRepository(self.session)
        for person_id in tree:
            await records.forget_person(person_id)
        self.session.add(
            Erasure(
                id=erasure.id,
                person_id=erasure.person_id,
                person_ids=list(erasure.person_ids),
                requested_by=erasure.requested_by,
                reason=erasure.reason,
                request_id=erasure.request_id,
                identifier_count=erasure.identifier_count,
                forgotten_at=erasure.forgotten_at,
            )
        )
        await self.session.flush()

    async def erasure_of(self, person_id: uuid.UUID) -> ErasureRecord | None:
        """The erasure that forgot this person (the root of its tree)."""
        query = sa.select(Erasure).where(Erasure.person_id == person_id).order_by(Erasure.id).limit(1)
        row = (await self.session.scalars(query)).first()
        if row is None:
            return None
        return ErasureRecord(
            id=row.id,
            person_id=row.person_id,
            person_ids=tuple(row.person_ids),
            requested_by=row.requested_by,
            reason=row.reason,
            request_id=row.request_id,
            identifier_count=row.identifier_count,
            forgotten_at=row.forgotten_at,
        )
