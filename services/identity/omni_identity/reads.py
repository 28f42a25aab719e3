"""The SQL of reading the identity graph: a person, its identifiers, lineage and refused links.

IdentityRepository (repository.py) extends GraphReader with the locks and writes of resolving.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from omni_identity.changes import Attachment, RefusalRule, RefusedLink
from omni_identity.merge import MergeRecord, MergeRule
from omni_identity.models import Merge
from omni_identity.normalise import IdentifierKey


@dataclass(frozen=True)
class PersonRecord:
    """A person as read in one consistent statement: identifiers oldest first, merged ids sorted."""

    id: uuid.UUID
    created_at: datetime
    identifiers: list[IdentifierKey]
    merged_person_ids: list[uuid.UUID]
    forgotten_at: datetime | None = None


@dataclass(frozen=True)
class IdentifierRecord:
    """An identifier a person holds, with how it came to be attached."""

    id: uuid.UUID
    key: IdentifierKey
    attached_at: datetime
    source: str
    attached_to: uuid.UUID
    attachment: Attachment
    via: list[IdentifierKey]
    """The identifiers (still held by the same person) through which a resolve found the person."""


_PERSON_FROM = """
WITH RECURSIVE chain(id, merged_into, depth) AS (
    SELECT id, merged_into, 0 FROM persons WHERE id = ({start})
    UNION ALL
    SELECT p.id, p.merged_into, c.depth + 1 FROM persons AS p JOIN chain AS c ON p.id = c.merged_into
    WHERE c.depth < 10000
), live AS (
    SELECT p.id, p.created_at, p.forgotten_at FROM chain AS c JOIN persons AS p ON p.id = c.id
    WHERE c.merged_into IS NULL
), tree(id, depth) AS (
    SELECT p.id, 0 FROM persons AS p JOIN live ON p.merged_into = live.id
    UNION ALL
    SELECT p.id, t.depth + 1 FROM persons AS p JOIN tree AS t ON p.merged_into = t.id WHERE t.depth < 10000
)
SELECT live.id, live.created_at, live.forgotten_at,
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

_IDENTIFIERS_OF = sa.text(
    "SELECT i.id, i.type, i.value, i.created_at, i.source, i.attached_to, i.attachment,"
    " ARRAY(SELECT v.type FROM identifiers AS v WHERE v.person_id = i.person_id AND v.id = ANY(i.via)"
    "       ORDER BY v.id) AS via_types,"
    " ARRAY(SELECT v.value FROM identifiers AS v WHERE v.person_id = i.person_id AND v.id = ANY(i.via)"
    "       ORDER BY v.id) AS via_values"
    " FROM identifiers AS i WHERE i.person_id = :person_id AND (CAST(:after AS uuid) IS NULL OR i.id > :after)"
    " ORDER BY i.id LIMIT :limit"
)

_REFUSED_LINKS_OF = sa.text(
    "SELECT id, type, value, holder_id, person_ids, resolved_person_id, rule, rule_type, description, source,"
    " refused_at, last_refused_at, count AS times"
    " FROM refused_links WHERE person_ids && CAST(:person_ids AS uuid[])"
    " AND (CAST(:after AS uuid) IS NULL OR id > :after) ORDER BY id LIMIT :limit"
)


class GraphReader:
    """Reads of the identity graph within the caller's transaction."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

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
        """The merges whose survivor is one of these persons, or that took one of them away (undone, for a
        live person), in id (time) order, after a given merge id."""
        query = (
            sa.select(Merge)
            .where(sa.or_(Merge.survivor_id.in_(survivor_ids), Merge.merged_id.in_(survivor_ids)))
            .order_by(Merge.id)
            .limit(limit)
        )
        if after is not None:
            query = query.where(Merge.id > after)
        result = await self.session.execute(query)
        return [merge_record(merge) for merge in result.scalars()]

    async def identifiers_of(
        self, person_id: uuid.UUID, *, after: uuid.UUID | None, limit: int
    ) -> list[IdentifierRecord]:
        """The identifiers a live person holds, in attach order, after a given identifier id."""
        result = await self.session.execute(
            _IDENTIFIERS_OF, {"person_id": person_id, "after": after, "limit": limit}
        )
        return [
            IdentifierRecord(
                id=row.id,
                key=IdentifierKey(row.type, row.value),
                attached_at=row.created_at,
                source=row.source,
                attached_to=row.attached_to,
                attachment=Attachment(row.attachment),
                via=[IdentifierKey(t, v) for t, v in zip(row.via_types, row.via_values, strict=True)],
            )
            for row in result
        ]

    async def refused_links_of(
        self, person_ids: Sequence[uuid.UUID], *, after: uuid.UUID | None, limit: int
    ) -> list[RefusedLink]:
        """The refused links involving any of these persons, oldest first, after a given link id."""
        result = await self.session.execute(
            _REFUSED_LINKS_OF, {"person_ids": list(person_ids), "after": after, "limit": limit}
        )
        return [
            RefusedLink(
                id=row.id,
                key=IdentifierKey(row.type, row.value),
                holder_id=row.holder_id,
                person_ids=tuple(row.person_ids),
                resolved_person_id=row.resolved_person_id,
                rule=RefusalRule(row.rule),
                rule_type=row.rule_type,
                description=row.description,
                source=row.source,
                refused_at=row.refused_at,
                last_refused_at=row.last_refused_at,
                count=row.times,
            )
            for row in result
        ]


def merge_record(merge: Merge) -> MergeRecord:
    """A lineage row as the domain's record."""
    return MergeRecord(
        id=merge.id,
        survivor_id=merge.survivor_id,
        merged_id=merge.merged_id,
        cause_identifiers=tuple(IdentifierKey(k["type"], k["value"]) for k in merge.cause_identifiers),
        source=merge.source,
        merged_at=merge.merged_at,
        rule=MergeRule(merge.rule),
        reason=merge.reason,
        undone_at=merge.undone_at,
        undo_reason=merge.undo_reason,
        reference=merge.reference,
    )


def _person_record(row: sa.Row[Any] | None) -> PersonRecord | None:
    if row is None:
        return None
    return PersonRecord(
        id=row.id,
        created_at=row.created_at,
        identifiers=[IdentifierKey(t, v) for t, v in zip(row.types, row.vals, strict=True)],
        merged_person_ids=list(row.merged_ids),
        forgotten_at=row.forgotten_at,
    )
