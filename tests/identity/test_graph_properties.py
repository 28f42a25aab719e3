"""Property tests: any sequence of resolve batches, unmerges and forgets, applied as storage would, keeps the
graph's invariants: every identifier belongs to at most one live person, limits hold, and the lineage (who
each identifier was attached to, and the merges that stand) replays to the current graph.

Without rules, the persons are exactly the groups of identifiers ever seen together, whatever the order.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omni_identity.changes import GraphChanges, Held, ResolveRequest
from omni_identity.identifier_types import IdentifierTypeRegistry
from omni_identity.merge import final_survivor
from omni_identity.normalise import IdentifierKey
from omni_identity.resolution import Resolver, changes_anything
from omni_identity.rules import Rules, Tally
from omni_identity.unmerge import HeldIdentifier, split

NOW = datetime(2025, 1, 1, tzinfo=UTC)
RULES = Rules(IdentifierTypeRegistry.defaults())
POOLS = {"user_id": 2, "loyalty_card": 2, "email": 4, "phone": 3, "device_id": 3, "anonymous_id": 7}
KEYS = [IdentifierKey(t, str(v)) for t, n in POOLS.items() for v in range(n)]
LIMITS = {name: t.limit for name, t in RULES._types.items() if t.limit is not None}

requests = st.lists(st.sampled_from(KEYS), min_size=1, max_size=4, unique=True).map(
    lambda keys: ResolveRequest(identifiers=tuple(keys), source="prop")
)
batches = st.lists(requests, min_size=1, max_size=5)
steps = st.one_of(
    batches,
    batches,
    st.tuples(st.just("unmerge"), st.integers(0, 50)),
    st.tuples(st.just("unmerge"), st.integers(0, 50)),
    st.tuples(st.just("forget"), st.integers(0, 50)),
    st.tuples(st.just("link"), st.integers(0, 50)),
    st.tuples(st.just("link"), st.integers(0, 50)),
)


@dataclass
class Stored:
    """An identifier row."""

    id: uuid.UUID
    holder: uuid.UUID
    attached_to: uuid.UUID
    via: tuple[uuid.UUID, ...]


class Store:
    """What the database holds, changed the way the repositories change it."""

    def __init__(self, new_id: Callable[[], uuid.UUID]) -> None:
        self.new_id = new_id
        self.rows: dict[IdentifierKey, Stored] = {}
        self.merged_into: dict[uuid.UUID, uuid.UUID | None] = {}
        self.forgotten: set[uuid.UUID] = set()
        self.merges: dict[uuid.UUID, tuple[uuid.UUID, uuid.UUID, bool]] = {}
        """merge id → (survivor, merged, undone)."""
        self.tombstoned: set[IdentifierKey] = set()

    def resolve(self, batch: list[ResolveRequest], *, rules: Rules | None = RULES) -> GraphChanges:
        mentioned = {k for r in batch for k in r.identifiers}
        holders = {k: Held(row.holder, row.id) for k, row in self.rows.items() if k in mentioned}
        tallies: dict[uuid.UUID, Tally] = {}
        for row_key, row in self.rows.items():
            if row.holder in {h.person_id for h in holders.values()} and row_key.type in RULES.watched:
                counts = tallies.setdefault(row.holder, {}).setdefault(row_key.type, [0, 0])
                counts[0] += 1
                counts[1] += 1
        ignored = (mentioned & self.tombstoned) - set(holders)
        changes = Resolver(
            holders, now=NOW, new_id=self.new_id, rules=rules, tallies=tallies, ignored=ignored
        ).resolve_all(batch)
        if changes.changed:
            assert changes_anything({k: h.person_id for k, h in holders.items()}, batch)
        self.apply(changes)
        return changes

    def apply(self, changes: GraphChanges) -> None:
        for person_id in changes.created_person_ids:
            self.merged_into[person_id] = None
        for merged, survivor in changes.merged_into.items():
            self.merged_into[merged] = survivor
        for row in self.rows.values():
            if row.holder in changes.moved_identifiers:
                row.holder = changes.moved_identifiers[row.holder]
        for new in changes.new_identifiers:
            assert new.key not in self.rows, "an identifier was stored twice"
            self.rows[new.key] = Stored(new.id, new.person_id, new.attached_to, new.via)
        for merge in changes.merges:
            self.merges[merge.id] = (merge.survivor_id, merge.merged_id, False)

    def root(self, person_id: uuid.UUID) -> uuid.UUID:
        return final_survivor(person_id, {k: v for k, v in self.merged_into.items() if v is not None})

    def tree(self, person_id: uuid.UUID) -> set[uuid.UUID]:
        return {p for p in self.merged_into if self._passes(p, person_id)}

    def _passes(self, person_id: uuid.UUID, through: uuid.UUID) -> bool:
        while person_id is not None:
            if person_id == through:
                return True
            person_id = self.merged_into[person_id]  # type: ignore[assignment]
        return False

    def unmerge(self, person_id: uuid.UUID) -> None:
        if self.merged_into[person_id] is None or person_id in self.forgotten:
            return
        root = self.root(person_id)
        held = [
            HeldIdentifier(row.id, k, row.attached_to, row.via)
            for k, row in self.rows.items()
            if row.holder == root
        ]
        parts = split(held, self.tree(person_id))
        by_id = {row.id: row for row in self.rows.values()}
        for moved in parts.came_with:
            by_id[moved.id].holder = person_id
        for moved in parts.found_through:
            by_id[moved.id].holder = by_id[moved.id].attached_to = person_id
        self.merged_into[person_id] = None
        [active] = [i for i, (_, m, undone) in self.merges.items() if m == person_id and not undone]
        survivor, merged, _ = self.merges[active]
        self.merges[active] = (survivor, merged, True)

    def forget(self, person_id: uuid.UUID) -> None:
        root = self.root(person_id)
        if root in self.forgotten:
            return
        tree = self.tree(root)
        for row_key in [k for k, row in self.rows.items() if row.holder == root]:
            del self.rows[row_key]
            self.tombstoned.add(row_key)
        self.forgotten |= tree
        self.merges = {i: m for i, m in self.merges.items() if not ({m[0], m[1]} & tree)}

    def check(self, *, limits: bool = True) -> None:
        """The invariants of the graph (limits only when the rules were applied)."""
        live = {p for p, into in self.merged_into.items() if into is None and p not in self.forgotten}
        # Every identifier belongs to exactly one live person.
        assert all(row.holder in live for row in self.rows.values())
        # Limits hold.
        counts: dict[tuple[uuid.UUID, str], int] = {}
        for row_key, row in self.rows.items():
            counts[row.holder, row_key.type] = counts.get((row.holder, row_key.type), 0) + 1
        assert not limits or all(n <= LIMITS.get(type_name, n) for (_, type_name), n in counts.items())
        # The merges that stand are exactly the merged_into links of persons not forgotten.
        standing = {merged: survivor for survivor, merged, undone in self.merges.values() if not undone}
        links = {
            p: into for p, into in self.merged_into.items() if into is not None and p not in self.forgotten
        }
        assert standing == links
        # Replaying the lineage leads every identifier from the person it was attached to, to its holder.
        for row in self.rows.values():
            assert final_survivor(row.attached_to, standing) == row.holder


def counter() -> Callable[[], uuid.UUID]:
    state = {"n": 0}

    def next_id() -> uuid.UUID:
        state["n"] += 1
        return uuid.UUID(int=state["n"])

    return next_id


def components(groups: list[tuple[IdentifierKey, ...]]) -> set[frozenset[IdentifierKey]]:
    parent: dict[IdentifierKey, IdentifierKey] = {}

    def find(key: IdentifierKey) -> IdentifierKey:
        parent.setdefault(key, key)
        while parent[key] != key:
            key = parent[key]
        return key

    for group in groups:
        for key in group:
            parent[find(key)] = find(group[0])
    result: dict[IdentifierKey, set[IdentifierKey]] = {}
    for key in parent:
        result.setdefault(find(key), set()).add(key)
    return {frozenset(v) for v in result.values()}


@settings(max_examples=300, deadline=None)
@given(st.lists(batches, min_size=1, max_size=8))
def test_without_rules_persons_are_the_groups_of_identifiers_seen_together(
    sequence: list[list[ResolveRequest]],
) -> None:
    store = Store(counter())
    seen: list[tuple[IdentifierKey, ...]] = []
    for batch in sequence:
        changes = store.resolve(batch, rules=None)
        seen += [r.identifiers for r in batch]
        # Every resolution leads to the live person that now holds its identifiers.
        for request, resolution in zip(batch, changes.resolutions, strict=True):
            assert resolution.person_id is not None
            live = store.root(resolution.person_id)
            assert {store.rows[k].holder for k in request.identifiers} == {live}
        store.check(limits=False)

    by_person: dict[uuid.UUID, set[IdentifierKey]] = {}
    for key, row in store.rows.items():
        by_person.setdefault(row.holder, set()).add(key)
    assert {frozenset(v) for v in by_person.values()} == components(seen)
    # Each live person is the oldest of the persons merged into it.
    assert all(survivor < merged for survivor, merged, _ in store.merges.values())


@pytest.mark.parametrize("rules", [RULES, None], ids=["default-rules", "no-rules"])
@settings(max_examples=300, deadline=None)
@given(st.lists(steps, min_size=1, max_size=25))
def test_any_sequence_of_resolves_unmerges_and_forgets_keeps_the_invariants(
    rules: Rules | None, sequence: list[list[ResolveRequest] | tuple[str, int]]
) -> None:
    store = Store(counter())
    for step in sequence:
        if isinstance(step, list):
            changes = store.resolve(step, rules=rules)
            for request, resolution in zip(step, changes.resolutions, strict=True):
                if resolution.person_id is None:
                    assert set(request.identifiers) <= store.tombstoned
                    continue
                kept = set(request.identifiers) - {link.key for link in resolution.refused_links}
                kept -= set(resolution.ignored_identifiers)
                # What the rules kept of a request is held together by the person it resolved to.
                assert {store.rows[k].holder for k in kept} == {store.root(resolution.person_id)}
        else:
            kind, index = step
            if kind == "link":
                # Two live persons' identifiers seen together, so that merges (and their undoing) are frequent.
                holders = sorted({row.holder for row in store.rows.values()})
                if len(holders) > 1:
                    first, second = holders[index % len(holders)], holders[(index + 1) % len(holders)]
                    pick = [
                        min(k for k, row in store.rows.items() if row.holder == p) for p in (first, second)
                    ]
                    store.resolve([ResolveRequest(tuple(pick), "link")], rules=rules)
                    store.check(limits=rules is not None)
                continue
            if kind == "unmerge":
                persons = sorted(
                    p for p, into in store.merged_into.items() if into and p not in store.forgotten
                )
            else:
                persons = sorted(store.merged_into)
            if not persons:
                continue
            target = persons[index % len(persons)]
            if kind == "unmerge":
                store.unmerge(target)
            else:
                store.forget(target)
        store.check(limits=rules is not None)
