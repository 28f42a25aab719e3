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
from datetime import datetime

import sqlalchemy as sa

from omni_identity.changes import GraphChanges, Held, RefusedLink
from omni_identity.merge import MergeRecord
from omni_identity.normalise import IdentifierKey
from omni_identity.reads import GraphReader
from omni_identity.rules import Tally


def identifier_lock_key(key: IdentifierKey) -> int:
    """A stable signed 64-bit advisory-lock key for an identifier (the same in every process and release)."""
    digest = hashlib.blake2b(f"{key.type}\x00{key.value}".encode(), digest_size=8, person=b"omni-id").digest()
    return int.from_bytes(digest, "big", signed=True)


class ConcurrentMerge(Exception):
    """A person the transaction wanted to change was merged, split or forgotten meanwhile; run it again."""


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


class IdentityRepository(GraphReader):
    """Reads and writes the identity graph within the caller's transaction."""

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


def _uuid_array(ids: Iterable[uuid.UUID]) -> str:
    return "{" + ",".join(str(i) for i in ids) + "}"


def _key_arrays(keys: Sequence[IdentifierKey]) -> dict[str, list[str]]:
    return {"types": [k.type for k in keys], "values": [k.value for k in keys]}
