"""The SQL of resolving and reading the identity graph: locks, reads and the bulk writes of a resolved batch.

Concurrency rests on two kinds of locks, always taken in the same order so that resolves never deadlock:
1. a transaction-scoped advisory lock per identifier (a stable 64-bit hash of type and value), all of them
   up front, in ascending key order: whoever holds it alone may create, re-point or remove that identifier;
2. then, in the one statement that reads who holds them, a row lock on every person holding one, in
   ascending id order, so that no one adds identifiers to a person while it is being merged away.
Nothing ever waits for an advisory lock while holding a person lock, so the wait-for graph has no cycles.
If a holder turns out to have been merged away between the two steps (its row lock waited for the merge
to commit), the transaction is started again (ConcurrentMerge) rather than holding a lock on a dead person
while waiting for more, which could deadlock with a reader in the same position. Operator changes (merge,
unmerge, forget; operator_repository.py) lock every identifier of the persons they change the same way.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from omni_identity.changes import Attachment, GraphChanges, Held, RefusalRule, RefusedLink
from omni_identity.merge import MergeRecord, MergeRule
from omni_identity.models import Merge
from omni_identity.normalise import IdentifierKey
from omni_identity.rules import Tally


def identifier_lock_key(key: IdentifierKey) -> int:
    """A stable signed 64-bit advisory-lock key for an identifier (the same in every process and release)."""
    digest = hashlib.blake2b(f"{key.type}\x00{key.value}".encode(), digest_size=8, person=b"omni-id").digest()
    return int.from_bytes(digest, "big", signed=True)


class ConcurrentMerge(Exception):
    """A person the transaction wanted to change was merged, split or forgotten meanwhile; run it again."""


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
# The same statement says which of the given hashes are tombstones: it starts after the identifiers'
# advisory locks are held, and nobody can forget an identifier without its lock, so that answer stays true.
_LOCK_HOLDERS = sa.text(
    "WITH locked AS ("
    " SELECT i.type, i.value, i.id, p.id AS person_id, p.merged_into, p.forgotten_at"
    + _MATCHES
    + " JOIN persons AS p ON p.id = i.person_id"
    " ORDER BY p.id FOR NO KEY UPDATE OF p"
    ") SELECT type, value, id, person_id, merged_into, forgotten_at, NULL::bytea AS hash FROM locked"
    " UNION ALL"
    " SELECT NULL, NULL, NULL, NULL, NULL, NULL, t.hash FROM tombstones AS t"
    " WHERE t.hash = ANY(CAST(:hashes AS bytea[]))"
)

_TOMBSTONED = sa.text("SELECT hash FROM tombstones WHERE hash = ANY(CAST(:hashes AS bytea[]))")

# Read after the person locks are held, in a statement of its own: its snapshot then includes every
# identifier others attached to these persons before we locked them. Only batches whose rules need them.
_TALLIES = sa.text(
    "SELECT i.person_id, i.type,"
    " (count(*) FILTER (WHERE w.since IS NULL OR i.created_at >= w.since))::int AS recent,"
    " count(*)::int AS total"
    " FROM identifiers AS i"
    " JOIN unnest(CAST(:watched AS text[]), CAST(:since AS timestamptz[])) AS w(type, since) ON i.type = w.type"
    " WHERE i.person_id = ANY(CAST(:person_ids AS uuid[]))"
    " GROUP BY i.person_id, i.type"
)

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

# Bulk writes pass one array per column and unnest them: one statement and one round trip, whatever the size.
_INSERT_PERSONS = sa.text(
    "INSERT INTO persons (id, created_at) SELECT id, :now FROM unnest(CAST(:ids AS uuid[])) AS t(id)"
)

# `via` differs in length per row, so each is passed as an array literal and cast row by row.
_INSERT_IDENTIFIERS = sa.text(
    "INSERT INTO identifiers (type, value, person_id, source, created_at, id, attached_to, via, attachment)"
    " SELECT type, value, person_id, source, :now, id, attached_to, CAST(via AS uuid[]), attachment"
    " FROM unnest("
    " CAST(:types AS text[]), CAST(:values AS text[]), CAST(:person_ids AS uuid[]), CAST(:sources AS text[]),"
    " CAST(:ids AS uuid[]), CAST(:attached_to AS uuid[]), CAST(:vias AS text[]), CAST(:attachments AS text[])"
    ") AS t(type, value, person_id, source, id, attached_to, via, attachment)"
)

_INSERT_MERGES = sa.text(
    "INSERT INTO merges (id, survivor_id, merged_id, cause_identifiers, source, merged_at, rule, reason)"
    " SELECT id, survivor_id, merged_id, CAST(cause AS jsonb), source, merged_at, rule, reason FROM unnest("
    " CAST(:ids AS uuid[]), CAST(:survivor_ids AS uuid[]), CAST(:merged_ids AS uuid[]),"
    " CAST(:causes AS text[]), CAST(:sources AS text[]), CAST(:merged_ats AS timestamptz[]),"
    " CAST(:rules AS text[]), CAST(:reasons AS text[])"
    ") AS t(id, survivor_id, merged_id, cause, source, merged_at, rule, reason)"
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

# A refusal seen again for the same person counts up its record instead of adding one.
_UPSERT_REFUSED_LINKS = sa.text(
    "INSERT INTO refused_links (id, type, value, holder_id, person_ids, resolved_person_id, rule, rule_type,"
    " description, source, refused_at, last_refused_at, count)"
    " SELECT id, type, value, holder_id, CAST(person_ids AS uuid[]), resolved_person_id, rule, rule_type,"
    " description, source, :now, :now, count FROM unnest("
    " CAST(:ids AS uuid[]), CAST(:types AS text[]), CAST(:values AS text[]), CAST(:holder_ids AS uuid[]),"
    " CAST(:person_ids AS text[]), CAST(:resolved AS uuid[]), CAST(:rules AS text[]),"
    " CAST(:rule_types AS text[]), CAST(:descriptions AS text[]), CAST(:sources AS text[]),"
    " CAST(:counts AS bigint[])"
    ") AS t(id, type, value, holder_id, person_ids, resolved_person_id, rule, rule_type, description, source,"
    " count)"
    " ON CONFLICT (type, value, resolved_person_id, rule, rule_type) DO UPDATE SET"
    " count = refused_links.count + EXCLUDED.count, last_refused_at = EXCLUDED.last_refused_at,"
    " holder_id = EXCLUDED.holder_id, person_ids = EXCLUDED.person_ids,"
    " description = EXCLUDED.description, source = EXCLUDED.source"
    " RETURNING id, type, value, resolved_person_id, rule, rule_type, refused_at, count AS times"
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

    async def lock_holders(
        self, keys: Sequence[IdentifierKey], hashes: Iterable[bytes] = ()
    ) -> tuple[dict[IdentifierKey, Held], set[bytes]]:
        """The holders of the (already advisory-locked) identifiers, each row-locked until the transaction ends,
        and which of the given tombstone hashes are tombstones.

        Raises ConcurrentMerge when a holder was merged away after the identifiers were locked.
        """
        result = await self.session.execute(_LOCK_HOLDERS, {**_key_arrays(keys), "hashes": list(hashes)})
        holders = {}
        tombstoned = set()
        for row in result:
            if row.hash is not None:
                tombstoned.add(bytes(row.hash))
                continue
            if row.merged_into is not None or row.forgotten_at is not None:
                raise ConcurrentMerge(
                    f"person {row.person_id} was merged into {row.merged_into} or forgotten"
                )
            holders[IdentifierKey(row.type, row.value)] = Held(row.person_id, row.id)
        return holders, tombstoned

    async def tombstoned(self, hashes: Iterable[bytes]) -> set[bytes]:
        """Which of these hashes are tombstones."""
        result = await self.session.execute(_TOMBSTONED, {"hashes": list(hashes)})
        return {bytes(row.hash) for row in result}

    async def tallies(
        self, person_ids: Iterable[uuid.UUID], windows: Mapping[str, datetime | None]
    ) -> dict[uuid.UUID, Tally]:
        """Each person's watched-type counts: [attached within the type's window, all]."""
        params = {"watched": list(windows), "since": list(windows.values()), "person_ids": list(person_ids)}
        tallies: dict[uuid.UUID, Tally] = {}
        for row in await self.session.execute(_TALLIES, params):
            tallies.setdefault(row.person_id, {})[row.type] = [row.recent, row.total]
        return tallies

    async def apply(self, changes: GraphChanges) -> None:
        """Write a resolved batch: new persons, merges, moved and new identifiers, lineage, refused links."""
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
                    "ids": [n.id for n in new],
                    "attached_to": [n.attached_to for n in new],
                    "vias": [_uuid_array(n.via) if n.via else None for n in new],
                    "attachments": [n.attachment.value for n in new],
                    "now": now,
                },
            )
        if changes.merges:
            await self.insert_merges(changes.merges)
        if changes.refused_links:
            await self._upsert_refused_links(changes.refused_links, now)

    async def insert_merges(self, merges: Sequence[MergeRecord]) -> None:
        """Record merges in the lineage."""
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
                "rules": [m.rule.value for m in merges],
                "reasons": [m.reason for m in merges],
            },
        )

    async def _upsert_refused_links(self, links: Sequence[RefusedLink], now: datetime) -> None:
        # Always in the same order, so two batches refusing the same links cannot deadlock on them.
        links = sorted(
            links, key=lambda link: (link.dedupe_key[0], link.dedupe_key[1], str(link.dedupe_key[2]))
        )
        by_key = {link.dedupe_key: link for link in links}
        result = await self.session.execute(
            _UPSERT_REFUSED_LINKS,
            {
                "ids": [link.id for link in links],
                "types": [link.key.type for link in links],
                "values": [link.key.value for link in links],
                "holder_ids": [link.holder_id for link in links],
                "person_ids": [_uuid_array(link.person_ids) for link in links],
                "resolved": [link.resolved_person_id for link in links],
                "rules": [link.rule.value for link in links],
                "rule_types": [link.rule_type for link in links],
                "descriptions": [link.description for link in links],
                "sources": [link.source for link in links],
                "counts": [link.count for link in links],
                "now": now,
            },
        )
        # A refusal recorded before keeps its id and first time; the answer shows the record as it is now.
        for row in result:
            link = by_key[(row.type, row.value, row.resolved_person_id, row.rule, row.rule_type)]
            link.id, link.refused_at, link.count = row.id, row.refused_at, row.times

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
    )


def _uuid_array(ids: Iterable[uuid.UUID]) -> str:
    return "{" + ",".join(str(i) for i in ids) + "}"


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
        forgotten_at=row.forgotten_at,
    )
