"""Property tests: any sequence of resolve batches, applied as storage would, keeps the graph's invariants."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from omni_identity.changes import GraphChanges, Held, ResolveRequest
from omni_identity.merge import final_survivor
from omni_identity.normalise import IdentifierKey
from omni_identity.resolution import Resolver, changes_anything

NOW = datetime(2025, 1, 1, tzinfo=UTC)
KEYS = [IdentifierKey(t, str(v)) for t in ("email", "device_id", "anonymous_id") for v in range(6)]

requests = st.lists(st.sampled_from(KEYS), min_size=1, max_size=4, unique=True).map(
    lambda keys: ResolveRequest(identifiers=tuple(keys), source="prop")
)
batches = st.lists(st.lists(requests, min_size=1, max_size=5), min_size=1, max_size=8)


class Store:
    """What the database holds, changed the way IdentityRepository.apply changes it."""

    def __init__(self) -> None:
        self.holder: dict[IdentifierKey, uuid.UUID] = {}
        self.persons: dict[uuid.UUID, uuid.UUID | None] = {}
        self.merges: list[tuple[uuid.UUID, uuid.UUID]] = []
        self.created: list[uuid.UUID] = []

    def apply(self, changes: GraphChanges) -> None:
        for person_id in changes.created_person_ids:
            self.persons[person_id] = None
            self.created.append(person_id)
        for merged, survivor in changes.merged_into.items():
            self.persons[merged] = survivor
        for old, new in changes.moved_identifiers.items():
            for key, holder in self.holder.items():
                if holder == old:
                    self.holder[key] = new
        for new_identifier in changes.new_identifiers:
            assert new_identifier.key not in self.holder, "an identifier was stored twice"
            self.holder[new_identifier.key] = new_identifier.person_id
        self.merges += [(m.survivor_id, m.merged_id) for m in changes.merges]


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
@given(batches)
def test_any_sequence_of_batches_keeps_the_graph_consistent(sequence: list[list[ResolveRequest]]) -> None:
    store = Store()
    new_id = counter()
    seen: list[tuple[IdentifierKey, ...]] = []
    for batch in sequence:
        holders = {k: p for k, p in store.holder.items() if any(k in r.identifiers for r in batch)}
        held = {k: Held(p, uuid.UUID(int=0)) for k, p in holders.items()}
        changes = Resolver(held, now=NOW, new_id=new_id).resolve_all(batch)
        assert changes_anything(holders, batch) == changes.changed
        store.apply(changes)
        seen += [r.identifiers for r in batch]
        # Every resolution leads to the live person that now holds its identifiers.
        for request, resolution in zip(batch, changes.resolutions, strict=True):
            assert resolution.person_id is not None
            live = final_survivor(resolution.person_id, {k: v for k, v in store.persons.items() if v})
            assert {store.holder[k] for k in request.identifiers} == {live}

    # Every identifier belongs to exactly one live person.
    assert all(store.persons[p] is None for p in store.holder.values())
    # The persons are exactly the groups of identifiers ever seen together, whatever the order.
    by_person: dict[uuid.UUID, set[IdentifierKey]] = {}
    for key, person_id in store.holder.items():
        by_person.setdefault(person_id, set()).add(key)
    assert {frozenset(v) for v in by_person.values()} == components(seen)
    # Each live person is the oldest of the persons merged into it.
    for survivor, merged in store.merges:
        assert survivor < merged
    # Replaying the lineage from the created persons gives the live persons.
    replay = {p: p for p in store.created}
    for survivor, merged in store.merges:
        replay[merged] = survivor
    live_by_replay = {final_survivor(p, {k: v for k, v in replay.items() if k != v}) for p in store.created}
    assert live_by_replay == set(by_person)
