"""Property test against the real service: random resolves, links, unmerges and forgets over gRPC keep the
stored graph's invariants (every identifier held by one live person, limits, lineage replays to the graph).

Each example works on identifiers of its own (a fresh prefix), so examples share the server but not data.
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omni.identity.v1 import identity_pb2
from omni_identity.identifier_types import IdentifierTypeRegistry
from omni_identity.merge import final_survivor

from .support import Identity, forget, ident, resolve, unique, unmerge

TYPES = {"user_id": 2, "loyalty_card": 2, "email": 3, "device_id": 3, "anonymous_id": 7}
LIMITS = {name: t.limit for name, t in IdentifierTypeRegistry.defaults().as_mapping().items() if t.limit}
SLOTS = [(t, n) for t, count in TYPES.items() for n in range(count)]

identifier_sets = st.lists(st.sampled_from(SLOTS), min_size=1, max_size=3, unique=True)
steps = st.one_of(
    st.tuples(st.just("resolve"), st.lists(identifier_sets, min_size=1, max_size=4)),
    st.tuples(st.just("link"), st.integers(0, 30)),
    st.tuples(st.just("unmerge"), st.integers(0, 30)),
    st.tuples(st.just("forget"), st.integers(0, 30)),
)


Graph = tuple[
    list[sa.Row[tuple[object, ...]]], dict[uuid.UUID, sa.Row[tuple[object, ...]]], dict[uuid.UUID, uuid.UUID]
]


def _value(prefix: str, slot: tuple[str, int]) -> str:
    type_, n = slot
    return f"{prefix}{n}@example.com" if type_ == "email" else f"{prefix}{type_[:3]}{n}"


async def _graph(identity: Identity, prefix: str) -> Graph:
    """The example's identifier rows, the persons they concern, and the standing merges among them."""
    async with identity.runtime.engine.connect() as connection:
        rows = list(
            (
                await connection.execute(
                    sa.text(
                        "SELECT type, value, person_id, attached_to FROM identifiers"
                        " WHERE value LIKE :prefix ORDER BY id"
                    ),
                    {"prefix": prefix + "%"},
                )
            ).all()
        )
        # The module's database is small: read every person and standing merge, keep the example's.
        everyone = {row.id: row for row in await connection.execute(sa.text("SELECT * FROM persons"))}
        merges = (
            await connection.execute(
                sa.text("SELECT survivor_id, merged_id FROM merges WHERE undone_at IS NULL")
            )
        ).all()
    involved = {r.person_id for r in rows} | {r.attached_to for r in rows}
    while True:
        more = {p.merged_into for p in everyone.values() if p.id in involved and p.merged_into}
        more |= {p.id for p in everyone.values() if p.merged_into in involved}
        if more <= involved:
            break
        involved |= more
    persons = {p: everyone[p] for p in involved}
    standing = {m.merged_id: m.survivor_id for m in merges if m.merged_id in involved}
    return rows, persons, standing


async def _check(identity: Identity, prefix: str) -> Graph:
    """Read the example's graph, assert its invariants and return it."""
    graph = rows, persons, standing = await _graph(identity, prefix)
    # Every identifier is held by one live person.
    assert all(
        persons[r.person_id].merged_into is None and persons[r.person_id].forgotten_at is None for r in rows
    )
    # Limits hold.
    counts: dict[tuple[uuid.UUID, str], int] = {}
    for r in rows:
        counts[r.person_id, r.type] = counts.get((r.person_id, r.type), 0) + 1
    assert all(n <= LIMITS.get(type_, n) for (_, type_), n in counts.items())
    # The standing merges are the merged_into links; replaying them leads each identifier to its holder.
    links = {p.id: p.merged_into for p in persons.values() if p.merged_into is not None}
    assert standing == links
    assert all(final_survivor(r.attached_to, standing) == r.person_id for r in rows)
    return graph


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequence=st.lists(steps, min_size=1, max_size=10))
async def test_random_operations_over_grpc_keep_the_stored_graph_consistent(
    identity: Identity, sequence: list[tuple[str, object]]
) -> None:
    prefix = unique("p") + "-"
    rows, persons, _ = await _graph(identity, prefix)
    for kind, argument in sequence:
        holders = sorted({r.person_id for r in rows})
        if kind == "resolve":
            assert isinstance(argument, list)
            await identity.stub.BatchResolvePersons(
                identity_pb2.BatchResolvePersonsRequest(
                    requests=[
                        identity_pb2.ResolvePersonRequest(
                            identifiers=[ident(slot[0], _value(prefix, slot)) for slot in slots],
                            source="prop",
                        )
                        for slots in argument
                    ]
                )
            )
        elif kind == "link" and len(holders) > 1:
            assert isinstance(argument, int)
            pair = [holders[argument % len(holders)], holders[(argument + 1) % len(holders)]]
            picked = [next(r for r in rows if r.person_id == p) for p in pair]
            await resolve(identity, *(ident(r.type, r.value) for r in picked), source="link")
        elif kind == "unmerge":
            assert isinstance(argument, int)
            merged = sorted(
                p.id for p in persons.values() if p.merged_into is not None and p.forgotten_at is None
            )
            if merged:
                await unmerge(identity, str(merged[argument % len(merged)]))
        elif kind == "forget" and holders:
            assert isinstance(argument, int)
            await forget(identity, str(holders[argument % len(holders)]))
        rows, persons, _ = await _check(identity, prefix)
    # Resolving every identifier again alone never fails (forgotten ones are marked) and keeps the invariants.
    await identity.stub.BatchResolvePersons(
        identity_pb2.BatchResolvePersonsRequest(
            requests=[
                identity_pb2.ResolvePersonRequest(identifiers=[ident(slot[0], _value(prefix, slot))])
                for slot in SLOTS
            ]
        )
    )
    await _check(identity, prefix)
