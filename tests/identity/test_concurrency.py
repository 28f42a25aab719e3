"""Concurrent resolves against the real server: one person per customer, a consistent graph, no deadlocks."""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from omni.identity.v1 import identity_pb2
from omni_identity.identifier_types import Trust, default_identifier_types
from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres

from .conftest import running_identity
from .support import EventLog, Identity, forget, ident, pairs, resolve, unique, unmerge

Pair = tuple[str, str]


def components(groups: Iterable[Iterable[Pair]]) -> set[frozenset[Pair]]:
    """The connected components of identifiers seen together: the persons any order of resolves must end with."""
    parent: dict[Pair, Pair] = {}

    def find(item: Pair) -> Pair:
        parent.setdefault(item, item)
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    for group in groups:
        items = list(group)
        for item in items:
            find(item)
        for other in items[1:]:
            parent[find(other)] = find(items[0])
    result: dict[Pair, set[Pair]] = {}
    for item in parent:
        result.setdefault(find(item), set()).add(item)
    return {frozenset(members) for members in result.values()}


async def graph_of(identity: Identity, values: set[Pair]) -> tuple[set[frozenset[Pair]], set[str]]:
    """The persons holding these identifiers as sets of identifiers, and any that are not live."""
    async with identity.runtime.engine.connect() as connection:
        rows = (
            await connection.execute(
                sa.text(
                    "SELECT i.type, i.value, i.person_id, p.merged_into FROM identifiers AS i"
                    " JOIN persons AS p ON p.id = i.person_id"
                    " WHERE (i.type, i.value) IN (SELECT * FROM unnest(CAST(:t AS text[]), CAST(:v AS text[])))"
                ),
                {"t": [t for t, _ in values], "v": [v for _, v in values]},
            )
        ).all()
    by_person: dict[uuid.UUID, set[Pair]] = {}
    dead = set()
    for row in rows:
        by_person.setdefault(row.person_id, set()).add((row.type, row.value))
        if row.merged_into is not None:
            dead.add(str(row.person_id))
    return {frozenset(members) for members in by_person.values()}, dead


@pytest.fixture(scope="module")
async def unruled(postgres: EmbeddedPostgres, nats_server: EmbeddedNats) -> AsyncIterator[Identity]:
    """Identity whose types have no limits and equal trust: every identifier seen together is one person."""
    types = [
        config.model_copy(update={"limit": None, "limit_window": None, "trust": Trust.MEDIUM})
        for config in default_identifier_types()
    ]
    async with running_identity(postgres, nats_server, identifier_types=types) as running:
        yield running


def _no_retries(caplog: pytest.LogCaptureFixture) -> None:
    # omni_kit.db.retry_transaction logs each run the database aborted (deadlock, serialisation failure,
    # unique key taken).
    retries = [
        r
        for r in caplog.records
        if r.getMessage().startswith("identity transaction: the database aborted the transaction")
    ]
    assert retries == [], "a resolve hit a deadlock or a unique violation and had to be retried"


async def test_twenty_concurrent_resolves_of_the_same_new_identifiers_yield_one_person(
    identity: Identity, events: EventLog, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="omni_kit.db")
    email, cookie = f"{unique('race')}@example.com", unique("c-")

    results = await asyncio.gather(
        *(resolve(identity, ident("email", email), ident("anonymous_id", cookie)) for _ in range(20))
    )

    person_ids = {r.person_id for r in results}
    assert len(person_ids) == 1
    assert sum(r.created for r in results) == 1
    graph, dead = await graph_of(identity, {("email", email), ("anonymous_id", cookie)})
    assert graph == {frozenset({("email", email), ("anonymous_id", cookie)})}
    assert not dead
    [person_id] = person_ids
    await events.wait_for("identity.person_created")
    await asyncio.sleep(0.2)
    assert [e.person_id for e in events.of_type("identity.person_created") if e.person_id == person_id] == [
        person_id
    ]
    _no_retries(caplog)


async def test_overlapping_concurrent_resolves_end_in_the_graph_of_running_them_one_by_one(
    unruled: Identity, caplog: pytest.LogCaptureFixture
) -> None:
    identity = unruled
    caplog.set_level(logging.WARNING, logger="omni_kit.db")
    rng = random.Random(20250101)
    types = ["email", "anonymous_id", "device_id", "user_id", "loyalty_card"]
    # A pool large enough that the requests form many customers of a few identifiers each, next to one
    # another: a graph that fused strangers, or split one customer, differs from the components.
    pool: list[Pair] = []
    for _ in range(400):
        kind = rng.choice(types)
        value = f"{unique('h')}@example.com" if kind == "email" else unique(f"{kind[:3]}-")
        pool.append((kind, value))
    groups = [rng.sample(pool, rng.randint(1, 3)) for _ in range(120)]
    expected = components(groups)
    assert len(expected) >= 20 and sum(len(c) > 2 for c in expected) >= 10, "a pool that tells little"

    async def single(group: list[Pair]) -> None:
        await resolve(identity, *(ident(t, v) for t, v in group))

    async def batch(chunk: list[list[Pair]]) -> None:
        await identity.stub.BatchResolvePersons(
            identity_pb2.BatchResolvePersonsRequest(
                requests=[
                    identity_pb2.ResolvePersonRequest(
                        identifiers=[ident(t, v) for t, v in group], source="batch"
                    )
                    for group in chunk
                ]
            )
        )

    calls = [single(group) for group in groups[:80]]
    calls += [batch(groups[i : i + 5]) for i in range(80, 120, 5)]
    rng.shuffle(calls)
    await asyncio.gather(*calls)

    graph, dead = await graph_of(identity, {pair for group in groups for pair in group})
    assert not dead, "an identifier is held by a person that was merged away"
    assert graph == expected
    _no_retries(caplog)


async def test_every_resolution_of_a_merged_person_leads_to_the_survivor(identity: Identity) -> None:
    hub = unique("hub-")
    spokes = [unique("spoke-") for _ in range(10)]
    # Each spoke first becomes its own person, then all are linked through the hub at the same time.
    first = await asyncio.gather(*(resolve(identity, ident("device_id", s)) for s in spokes))
    linked = await asyncio.gather(
        *(resolve(identity, ident("device_id", s), ident("user_id", hub)) for s in spokes)
    )

    survivors = set()
    for resolution in [*first, *linked]:
        person = (
            await identity.stub.GetPerson(identity_pb2.GetPersonRequest(person_id=resolution.person_id))
        ).person
        survivors.add(person.id)
    assert survivors == {min(r.person_id for r in first)}
    [survivor] = survivors
    person = (await identity.stub.GetPerson(identity_pb2.GetPersonRequest(person_id=survivor))).person
    assert pairs(person.identifiers) == {("user_id", hub), *(("device_id", s) for s in spokes)}
    assert set(person.merged_person_ids) == {r.person_id for r in first} - {survivor}


async def test_identifiers_added_to_a_person_while_it_is_merged_away_follow_it_to_the_survivor(
    identity: Identity, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="omni_kit.db")
    scenarios = []
    for _ in range(25):
        a, b, x = unique("a-"), unique("b-"), unique("x-")
        await resolve(identity, ident("user_id", a))
        await resolve(identity, ident("device_id", b), ident("anonymous_id", x))
        scenarios.append((a, b, x, [unique("y-") for _ in range(3)]))

    calls = []
    for a, b, x, ys in scenarios:
        # One request merges b's person into a's while others add new identifiers to b's person through x.
        calls.append(resolve(identity, ident("user_id", a), ident("device_id", b)))
        calls += [resolve(identity, ident("anonymous_id", x), ident("push_token", y)) for y in ys]
    await asyncio.gather(*calls)

    expected = components(
        [("user_id", a), ("device_id", b), ("anonymous_id", x), *(("push_token", y) for y in ys)]
        for a, b, x, ys in scenarios
    )
    everything = {pair for group in expected for pair in group}
    graph, dead = await graph_of(identity, everything)
    assert not dead, "an identifier was added to a person that was being merged away"
    assert graph == expected
    _no_retries(caplog)


async def _lineage_holds(identity: Identity, values: set[Pair]) -> dict[Pair, uuid.UUID]:
    """Assert the stored lineage replays to the holders of these identifiers; return who holds each."""
    async with identity.runtime.engine.connect() as connection:
        rows = (
            await connection.execute(
                sa.text(
                    "SELECT i.type, i.value, i.person_id, i.attached_to FROM identifiers AS i"
                    " WHERE (i.type, i.value) IN (SELECT * FROM unnest(CAST(:t AS text[]), CAST(:v AS text[])))"
                ),
                {"t": [t for t, _ in values], "v": [v for _, v in values]},
            )
        ).all()
        links: dict[Any, Any] = dict(
            (
                await connection.execute(
                    sa.text("SELECT id, merged_into FROM persons WHERE merged_into IS NOT NULL")
                )
            ).all()
        )
        standing: dict[Any, Any] = dict(
            (
                await connection.execute(
                    sa.text("SELECT merged_id, survivor_id FROM merges WHERE undone_at IS NULL")
                )
            ).all()
        )
    assert {p: s for p, s in standing.items() if p in links} == links
    for row in rows:
        person_id = row.attached_to
        while person_id in links:
            person_id = links[person_id]
        assert person_id == row.person_id, f"{row.type} {row.value} does not replay to its holder"
    return {(row.type, row.value): row.person_id for row in rows}


async def test_resolves_overlapping_unmerges_follow_the_side_they_were_attached_through(
    identity: Identity, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="omni_kit.db")
    scenarios = []
    for _ in range(15):
        s, m = unique("s-"), unique("m-")
        survivor = await resolve(identity, ident("device_id", s))
        merged = await resolve(identity, ident("anonymous_id", m))
        await resolve(identity, ident("device_id", s), ident("anonymous_id", m))
        scenarios.append(
            (survivor.person_id, merged.person_id, s, m, unique("push-"), f"{unique('e')}@example.com")
        )

    calls = []
    for _, merged_id, s, m, push, email in scenarios:
        calls.append(unmerge(identity, merged_id))
        # The merged side gains a push token, the survivor's side an email, while the split happens.
        calls.append(resolve(identity, ident("anonymous_id", m), ident("push_token", push)))
        calls.append(resolve(identity, ident("device_id", s), ident("email", email)))
        calls.append(resolve(identity, ident("anonymous_id", m)))
    random.Random(7).shuffle(calls)
    await asyncio.gather(*calls)

    values = {
        pair
        for *_, s, m, push, email in scenarios
        for pair in (("device_id", s), ("anonymous_id", m), ("push_token", push), ("email", email))
    }
    holders = await _lineage_holds(identity, values)
    for survivor_id, merged_id, s, m, push, email in scenarios:
        assert holders["anonymous_id", m] == holders["push_token", push] == uuid.UUID(merged_id)
        assert holders["device_id", s] == holders["email", email] == uuid.UUID(survivor_id)
    _no_retries(caplog)


async def test_concurrent_resolves_over_shared_devices_keep_the_limits(
    identity: Identity, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="omni_kit.db")
    rng = random.Random(20250301)
    devices = [unique("tab-") for _ in range(8)]
    accounts = [unique("acct-") for _ in range(25)]
    groups: list[list[Pair]] = []
    for _ in range(150):
        group = [("user_id", rng.choice(accounts)), ("device_id", rng.choice(devices))]
        if rng.random() < 0.3:
            group.append(("anonymous_id", unique("c-")))
        groups.append(group)

    await asyncio.gather(*(resolve(identity, *(ident(t, v) for t, v in group)) for group in groups))

    values = {pair for group in groups for pair in group}
    holders = await _lineage_holds(identity, values)
    graph, dead = await graph_of(identity, values)
    assert not dead
    for members in graph:
        assert sum(1 for t, _ in members if t == "user_id") <= 1
    # The graph is a fixed point: resolving every set again, one by one, moves nothing.
    for group in groups:
        await resolve(identity, *(ident(t, v) for t, v in group))
    assert await _lineage_holds(identity, values) == holders
    _no_retries(caplog)


async def test_resolves_racing_forgets_never_bring_a_forgotten_identifier_back(
    identity: Identity, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="omni_kit.db")
    customers = []
    for _ in range(15):
        device, cookie = unique("d-"), unique("c-")
        created = await resolve(identity, ident("device_id", device), ident("anonymous_id", cookie))
        customers.append((created.person_id, device, cookie))

    calls = []
    for person_id, device, cookie in customers:
        calls.append(forget(identity, person_id))
        calls.append(resolve(identity, ident("device_id", device), ident("push_token", unique("p-"))))
        calls.append(resolve(identity, ident("anonymous_id", cookie)))
        calls.append(resolve(identity, ident("device_id", device), ident("anonymous_id", cookie)))
    random.Random(11).shuffle(calls)
    outcomes = await asyncio.gather(*calls, return_exceptions=True)

    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            assert isinstance(outcome, grpc.aio.AioRpcError), outcome
            assert outcome.code() == grpc.StatusCode.FAILED_PRECONDITION
    async with identity.runtime.engine.connect() as connection:
        rows = (
            await connection.execute(
                sa.text(
                    "SELECT i.type, i.value FROM identifiers AS i"
                    " WHERE (i.type, i.value) IN (SELECT * FROM unnest(CAST(:t AS text[]), CAST(:v AS text[])))"
                ),
                {
                    "t": ["device_id", "anonymous_id"] * len(customers),
                    "v": [value for _, device, cookie in customers for value in (device, cookie)],
                },
            )
        ).all()
    assert rows == [], "an identifier of a forgotten person was stored again"
    _no_retries(caplog)
