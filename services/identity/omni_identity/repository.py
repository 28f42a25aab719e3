"""The SQL of resolving and reading the identity graph: locks, reads and the bulk writes of a resolved batch.

Concurrency rests on two kinds of locks, always taken in the same order so that resolves never deadlock:
1. a transaction-scoped advisory lock per identifier (a stable 64-bit hash of type and value), all of them
   up front, in ascending key order: whoever holds it alone may create, re-point or remove that identifier;
2. then, in the one statement that reads who holds them, a row lock on every person holding one, in
   ascending id order, so that no one adds identifiers to a person while it is being merged away.
Both are one call of identity_lock_holders (migration 0003), which begins the resolve's transaction.
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
from typing import Any

import sqlalchemy as sa

from omni_identity.changes import GraphChanges, Held, RefusedLink
from omni_identity.merge import MergeRecord
from omni_identity.normalise import IdentifierKey
from omni_identity.reads import GraphReader
from omni_identity.rules import Tally
from omni_kit.bus import OutboxRows


def identifier_lock_key(key: IdentifierKey) -> int:
    """A stable signed 64-bit advisory-lock key for an identifier (the same in every process and release)."""
    digest = hashlib.blake2b(f"{key.type}\x00{key.value}".encode(), digest_size=8, person=b"omni-id").digest()
    return int.from_bytes(digest, "big", signed=True)


class ConcurrentMerge(Exception):
    """A person the transaction wanted to change was merged, split or forgotten meanwhile; run it again."""


# The statements below run on the driver's own connection (asyncpg), prepared once per connection and bound
# positionally: on the resolve path the statement building of SQLAlchemy cost more than the database work.
_MATCHES = (
    " FROM identifiers AS i"
    " JOIN unnest($1::text[], $2::text[]) AS k(type, value)"
    " ON i.type = k.type AND i.value = k.value"
)

_HOLDERS = "SELECT i.type, i.value, i.person_id" + _MATCHES

# The identifiers' advisory locks in ascending key order, then the holders read and row-locked, in one
# round trip: identity_lock_holders (migration 0003) runs them as two statements, so the read's snapshot is
# taken once the locks are held. In the read, ORDER BY is applied before FOR NO KEY UPDATE locks the rows,
# so the person locks are taken in id order. A row updated by a transaction we waited for is returned as
# it is now, so merged_into shows a merge that committed after the read started. NO KEY UPDATE (not UPDATE)
# lets foreign-key checks of others pass. The same call says which of the given hashes are tombstones:
# nobody can forget an identifier without its advisory lock, so that answer stays true.
# Through the session (not the driver), so that the transaction begins with it.
_LOCK_HOLDERS = "SELECT * FROM identity_lock_holders($1::bigint[], $2::text[], $3::text[], $4::bytea[])"

_TOMBSTONED = "SELECT hash FROM tombstones WHERE hash = ANY($1::bytea[])"

# Read after the person locks are held, in a statement of its own: its snapshot then includes every
# identifier others attached to these persons before we locked them. Only batches whose rules need them.
# The persons' identifiers are read first, behind OFFSET 0 (which keeps the planner from folding the join
# with the types into the scan): joined directly, the plan intersected an index scan of every identifier
# of each watched type with the persons' ones, a cost that grows with the graph (7 ms for 8 persons among
# 90,000 identifiers, against 0.06 ms this way).
_TALLIES = (
    "SELECT i.person_id, i.type,"
    " (count(*) FILTER (WHERE w.since IS NULL OR i.created_at >= w.since))::int AS recent,"
    " count(*)::int AS total"
    " FROM (SELECT person_id, type, created_at FROM identifiers WHERE person_id = ANY($3::uuid[]) OFFSET 0)"
    " AS i"
    " JOIN unnest($1::text[], $2::timestamptz[]) AS w(type, since) ON i.type = w.type"
    " GROUP BY i.person_id, i.type"
)

# A whole resolved batch in one statement and one round trip: one array per column, unnested. The parts
# touch different rows, so it does not matter that they share one snapshot: persons created by the batch
# are inserted already pointing at the person they were merged into (foreign keys are checked at the end
# of the statement, when both rows exist); the update marks only persons stored before; identifiers are
# moved off persons stored before, and the new ones are inserted with their final holder. `via` differs
# in length per row, so each is passed as an array literal and cast row by row. The batch's events go into
# omni_kit's outbox table in the same statement (the columns its Outbox.add_envelopes writes). The move
# repeats its join key as `person_id = ANY(...)`: without it the plan hash-joined the few moved persons
# against a sequential scan of every identifier (15 ms a batch at 100,000 identifiers, and growing).
_APPLY = (
    "WITH new_persons AS ("
    " INSERT INTO persons (id, created_at, merged_into, merged_at)"
    " SELECT id, $1::timestamptz, into_id, CASE WHEN into_id IS NULL THEN NULL ELSE $1::timestamptz END"
    " FROM unnest($2::uuid[], $3::uuid[]) AS t(id, into_id)"
    "), marked AS ("
    " UPDATE persons SET merged_into = m.into_id, merged_at = $1::timestamptz"
    " FROM unnest($4::uuid[], $5::uuid[]) AS m(id, into_id) WHERE persons.id = m.id"
    "), moved AS ("
    " UPDATE identifiers SET person_id = m.to_id"
    " FROM unnest($6::uuid[], $7::uuid[]) AS m(from_id, to_id)"
    " WHERE identifiers.person_id = m.from_id AND identifiers.person_id = ANY($6::uuid[])"
    "), new_identifiers AS ("
    " INSERT INTO identifiers (type, value, person_id, source, created_at, id, attached_to, via, attachment)"
    " SELECT type, value, person_id, source, $1::timestamptz, id, attached_to, via::uuid[], attachment FROM unnest("
    " $8::text[], $9::text[], $10::uuid[], $11::text[], $12::uuid[], $13::uuid[], $14::text[], $15::text[]"
    ") AS t(type, value, person_id, source, id, attached_to, via, attachment)"
    "), new_merges AS ("
    " INSERT INTO merges"
    " (id, survivor_id, merged_id, cause_identifiers, source, merged_at, rule, reason, reference)"
    " SELECT id, survivor_id, merged_id, cause::jsonb, source, merged_at, rule, reason, reference FROM unnest("
    " $16::uuid[], $17::uuid[], $18::uuid[], $19::text[], $20::text[], $21::timestamptz[], $22::text[],"
    " $23::text[], $30::text[]"
    ") AS t(id, survivor_id, merged_id, cause, source, merged_at, rule, reason, reference)"
    "), staged AS ("
    " INSERT INTO outbox (id, subject, type, person_id, payload, headers)"
    " SELECT id, subject, type, person_id, payload, headers::jsonb FROM unnest("
    " $24::uuid[], $25::text[], $26::text[], $27::text[], $28::bytea[], $29::text[]"
    ") AS t(id, subject, type, person_id, payload, headers)"
    ") SELECT 1"
)

_INSERT_MERGES = sa.text(
    "INSERT INTO merges"
    " (id, survivor_id, merged_id, cause_identifiers, source, merged_at, rule, reason, reference)"
    " SELECT id, survivor_id, merged_id, CAST(cause AS jsonb), source, merged_at, rule, reason, reference"
    " FROM unnest("
    " CAST(:ids AS uuid[]), CAST(:survivor_ids AS uuid[]), CAST(:merged_ids AS uuid[]),"
    " CAST(:causes AS text[]), CAST(:sources AS text[]), CAST(:merged_ats AS timestamptz[]),"
    " CAST(:rules AS text[]), CAST(:reasons AS text[]), CAST(:references AS text[])"
    ") AS t(id, survivor_id, merged_id, cause, source, merged_at, rule, reason, reference)"
)

# A refusal seen again for the same person counts up its record instead of adding one.
_UPSERT_REFUSED_LINKS = (
    "INSERT INTO refused_links (id, type, value, holder_id, person_ids, resolved_person_id, rule, rule_type,"
    " description, source, refused_at, last_refused_at, count)"
    " SELECT id, type, value, holder_id, person_ids::uuid[], resolved_person_id, rule, rule_type,"
    " description, source, $1::timestamptz, $1::timestamptz, count FROM unnest("
    " $2::uuid[], $3::text[], $4::text[], $5::uuid[], $6::text[], $7::uuid[], $8::text[], $9::text[],"
    " $10::text[], $11::text[], $12::bigint[]"
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

    _driver: Any = None

    async def _connection(self) -> Any:
        """The asyncpg connection under the session (checked out, no transaction started by asking)."""
        if self._driver is None:
            connection = await self.session.connection()
            self._driver = (await connection.get_raw_connection()).driver_connection
        return self._driver

    async def _locked_connection(self) -> Any:
        """The asyncpg connection, which must be inside the session's transaction: row locks taken outside
        one would be released at once."""
        driver = await self._connection()
        if not driver.is_in_transaction():
            raise RuntimeError("lock_holders must come first (it starts the transaction)")
        return driver

    async def holders(self, keys: Sequence[IdentifierKey]) -> dict[IdentifierKey, uuid.UUID]:
        """The person holding each known identifier, read without locks (what was true at one instant).

        Before the transaction's first lock this runs on its own (no BEGIN, no COMMIT): one round trip.
        """
        if not keys:
            return {}
        driver = await self._connection()
        rows = await driver.fetch(_HOLDERS, [k.type for k in keys], [k.value for k in keys])
        return {IdentifierKey(row[0], row[1]): row[2] for row in rows}

    async def lock_holders(
        self, keys: Sequence[IdentifierKey], hashes: Iterable[bytes] = ()
    ) -> tuple[dict[IdentifierKey, Held], set[bytes]]:
        """Take the advisory lock of every identifier (ascending key order, until the transaction ends), then
        read their holders, each row-locked until the transaction ends, and which of the given tombstone
        hashes are tombstones. This begins the transaction.

        Raises ConcurrentMerge when a holder was merged away after the identifiers were locked.
        """
        lock_keys = sorted({identifier_lock_key(key) for key in keys})
        connection = await self.session.connection()
        result = await connection.exec_driver_sql(
            _LOCK_HOLDERS, (lock_keys, [k.type for k in keys], [k.value for k in keys], list(hashes))
        )
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
        driver = await self._locked_connection()
        return {bytes(row[0]) for row in await driver.fetch(_TOMBSTONED, list(hashes))}

    async def tallies(
        self, person_ids: Iterable[uuid.UUID], windows: Mapping[str, datetime | None]
    ) -> dict[uuid.UUID, Tally]:
        """Each person's watched-type counts: [attached within the type's window, all]."""
        driver = await self._locked_connection()
        rows = await driver.fetch(_TALLIES, list(windows), list(windows.values()), list(person_ids))
        tallies: dict[uuid.UUID, Tally] = {}
        for person_id, type_, recent, total in rows:
            tallies.setdefault(person_id, {})[type_] = [recent, total]
        return tallies

    async def apply(self, changes: GraphChanges, events: OutboxRows) -> None:
        """Write a resolved batch (new persons, merges, moved and new identifiers, lineage) and its events
        in one statement, then its refused links."""
        driver = await self._locked_connection()
        created = set(changes.created_person_ids)
        merged_into = changes.merged_into
        stored_merged = [pid for pid in merged_into if pid not in created]
        new = changes.new_identifiers
        merges = changes.merges
        await driver.execute(
            _APPLY,
            changes.now,
            changes.created_person_ids,
            [merged_into.get(pid) for pid in changes.created_person_ids],
            stored_merged,
            [merged_into[pid] for pid in stored_merged],
            list(changes.moved_identifiers),
            list(changes.moved_identifiers.values()),
            [n.key.type for n in new],
            [n.key.value for n in new],
            [n.person_id for n in new],
            [n.source for n in new],
            [n.id for n in new],
            [n.attached_to for n in new],
            [_uuid_array(n.via) if n.via else None for n in new],
            [n.attachment.value for n in new],
            [m.id for m in merges],
            [m.survivor_id for m in merges],
            [m.merged_id for m in merges],
            [_cause_json(m) for m in merges],
            [m.source for m in merges],
            [m.merged_at for m in merges],
            [m.rule.value for m in merges],
            [m.reason for m in merges],
            *events.columns(),
            [m.reference for m in merges],
        )
        if changes.refused_links:
            await self._upsert_refused_links(driver, changes.refused_links, changes.now)

    async def insert_merges(self, merges: Sequence[MergeRecord]) -> None:
        """Record merges in the lineage."""
        await self.session.execute(
            _INSERT_MERGES,
            {
                "ids": [m.id for m in merges],
                "survivor_ids": [m.survivor_id for m in merges],
                "merged_ids": [m.merged_id for m in merges],
                "causes": [_cause_json(m) for m in merges],
                "sources": [m.source for m in merges],
                "merged_ats": [m.merged_at for m in merges],
                "rules": [m.rule.value for m in merges],
                "reasons": [m.reason for m in merges],
                "references": [m.reference for m in merges],
            },
        )

    async def _upsert_refused_links(self, driver: Any, links: Sequence[RefusedLink], now: datetime) -> None:
        # Always in the same order, so two batches refusing the same links cannot deadlock on them.
        links = sorted(
            links, key=lambda link: (link.dedupe_key[0], link.dedupe_key[1], str(link.dedupe_key[2]))
        )
        by_key = {link.dedupe_key: link for link in links}
        rows = await driver.fetch(
            _UPSERT_REFUSED_LINKS,
            now,
            [link.id for link in links],
            [link.key.type for link in links],
            [link.key.value for link in links],
            [link.holder_id for link in links],
            [_uuid_array(link.person_ids) for link in links],
            [link.resolved_person_id for link in links],
            [link.rule.value for link in links],
            [link.rule_type for link in links],
            [link.description for link in links],
            [link.source for link in links],
            [link.count for link in links],
        )
        # A refusal recorded before keeps its id and first time; the answer shows the record as it is now.
        for row in rows:
            link = by_key[
                (row["type"], row["value"], row["resolved_person_id"], row["rule"], row["rule_type"])
            ]
            link.id, link.refused_at, link.count = row["id"], row["refused_at"], row["times"]


def _cause_json(merge: MergeRecord) -> str:
    return json.dumps([{"type": k.type, "value": k.value} for k in merge.cause_identifiers])


def _uuid_array(ids: Iterable[uuid.UUID]) -> str:
    return "{" + ",".join(str(i) for i in ids) + "}"
