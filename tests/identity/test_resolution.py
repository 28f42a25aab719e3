"""The resolver and merge rules as pure computations: what a batch of requests changes in the graph."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest

from omni_identity.batch_ids import batch_ids
from omni_identity.changes import (
    Attachment,
    Held,
    NewIdentifier,
    PersonCreated,
    PersonsMerged,
    ResolveRequest,
)
from omni_identity.merge import choose_survivor, final_survivor
from omni_identity.normalise import IdentifierKey
from omni_identity.repository import identifier_lock_key
from omni_identity.resolution import Resolver, dedupe

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def ids() -> Callable[[], uuid.UUID]:
    """Increasing ids, like UUIDv7 made one after the other."""
    counter: Iterator[int] = iter(range(1000, 10**6))
    return lambda: uuid.UUID(int=next(counter))


def key(type_: str, value: str) -> IdentifierKey:
    return IdentifierKey(type_, value)


def req(*keys: IdentifierKey, source: str = "t") -> ResolveRequest:
    return ResolveRequest(identifiers=keys, source=source)


def resolver(holders: dict[IdentifierKey, uuid.UUID]) -> Resolver:
    """A resolver without rules over stored identifiers whose ids are derived from their holders."""
    return Resolver({k: Held(p, identifier_id(k)) for k, p in holders.items()}, now=NOW, new_id=ids())


def identifier_id(key: IdentifierKey) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_OID, f"{key.type}:{key.value}")


P1, P2, P3 = (uuid.UUID(int=n) for n in (1, 2, 3))
A, B, C, D = key("email", "a@x.io"), key("device_id", "b"), key("anonymous_id", "c"), key("user_id", "d")


def test_unknown_identifiers_create_one_person_holding_them() -> None:
    changes = resolver({}).resolve_all([req(A, B)])

    [resolution] = changes.resolutions
    assert resolution.created
    assert changes.created_person_ids == [resolution.person_id]
    person_id = resolution.person_id
    assert person_id is not None
    assert [
        (n.key, n.person_id, n.source, n.attached_to, n.via, n.attachment) for n in changes.new_identifiers
    ] == [
        (A, person_id, "t", person_id, (), Attachment.NEW_PERSON),
        (B, person_id, "t", person_id, (), Attachment.NEW_PERSON),
    ]
    assert all(n.id.int >= 1000 for n in changes.new_identifiers)
    assert changes.events == [PersonCreated(person_id, (A, B), "t")]
    assert not changes.merges and not changes.merged_into


def test_known_identifiers_attach_the_new_ones_to_their_person() -> None:
    changes = resolver({A: P1}).resolve_all([req(A, B, source="app")])

    [resolution] = changes.resolutions
    assert resolution.person_id == P1
    assert not resolution.created
    assert resolution.added_identifiers == [B]
    [new] = changes.new_identifiers
    assert new == NewIdentifier(B, P1, "app", new.id, P1, (identifier_id(A),), Attachment.MATCHED)
    assert changes.events == []


def test_nothing_changes_when_everything_is_known() -> None:
    changes = resolver({A: P1, B: P1}).resolve_all([req(A, B)])
    assert not changes.changed
    assert changes.resolutions[0].person_id == P1


def test_linking_persons_merges_them_into_the_oldest() -> None:
    changes = resolver({A: P3, B: P1, C: P2}).resolve_all([req(A, B, C, D, source="pos")])

    [resolution] = changes.resolutions
    assert resolution.person_id == P1
    assert resolution.merged_person_ids == [P2, P3]
    assert resolution.added_identifiers == [D]
    assert changes.merged_into == {P2: P1, P3: P1}
    assert changes.moved_identifiers == {P2: P1, P3: P1}
    assert [(m.survivor_id, m.merged_id, m.cause_identifiers, m.source) for m in changes.merges] == [
        (P1, P2, (B, C), "pos"),
        (P1, P3, (A, B), "pos"),
    ]
    # The cause is what linked the persons: D, new, linked nobody.
    assert changes.events == [PersonsMerged(P1, (P2, P3), (A, B, C), "pos")]


def test_a_later_request_sees_what_an_earlier_one_did() -> None:
    changes = resolver({}).resolve_all([req(A), req(B), req(A, B), req(B, C)])

    first, second, linked, attached = changes.resolutions
    assert first.created and second.created
    assert linked.person_id == first.person_id
    assert linked.merged_person_ids == [second.person_id]
    assert attached.person_id == first.person_id and attached.added_identifiers == [C]
    # The second person was created and merged in the same batch: its identifiers are stored with the survivor.
    assert {n.key: n.person_id for n in changes.new_identifiers} == {
        A: first.person_id,
        B: first.person_id,
        C: first.person_id,
    }
    assert changes.moved_identifiers == {}
    assert [type(e) for e in changes.events] == [PersonCreated, PersonCreated, PersonsMerged]


def test_chained_merges_in_one_batch_move_identifiers_to_the_last_survivor() -> None:
    changes = resolver({A: P2, B: P3, C: P1}).resolve_all([req(A, B), req(B, C)])

    assert changes.merged_into == {P3: P2, P2: P1}
    assert changes.moved_identifiers == {P3: P1, P2: P1}
    assert [r.person_id for r in changes.resolutions] == [P2, P1]


def test_survivor_is_the_smallest_id_and_merged_into_chains_end_at_a_live_person() -> None:
    decision = choose_survivor([P3, P1, P2, P1])
    assert decision.survivor_id == P1
    assert decision.merged_ids == (P2, P3)
    assert final_survivor(P3, {P3: P2, P2: P1}) == P1
    assert final_survivor(P1, {P3: P2}) == P1
    with pytest.raises(ValueError):
        choose_survivor([])


def test_dedupe_keeps_first_seen_order() -> None:
    assert dedupe([B, A, B, C, A]) == (B, A, C)


def test_identifier_lock_keys_are_stable_signed_64_bit_numbers() -> None:
    first = identifier_lock_key(A)
    assert first == identifier_lock_key(IdentifierKey("email", "a@x.io"))
    assert -(2**63) <= first < 2**63
    assert identifier_lock_key(key("email", "a")) != identifier_lock_key(key("emai", "la"))
    # Fixed forever: every process and every release must lock the same key for the same identifier.
    assert identifier_lock_key(key("email", "ada@example.com")) == 4695653333417828540


def test_batch_ids_count_up_from_one_uuid7_and_never_carry_into_the_variant() -> None:
    starts = iter(
        [uuid.UUID("01890a5d-ac96-774b-bfff-fffffffffffe"), uuid.UUID("01890a5d-ac97-7000-8000-000000000000")]
    )
    next_id = batch_ids(lambda: next(starts), room=4)
    made = [next_id() for _ in range(6)]
    assert made == sorted(made) and len(set(made)) == 6
    assert all(m.version == 7 and m.variant == uuid.RFC_4122 for m in made)
    # Near the top of the random bits the count starts lower, so it stays a valid UUIDv7.
    assert made[0] == uuid.UUID("01890a5d-ac96-774b-bfff-fffffffffffa")
    assert made[4] == uuid.UUID("01890a5d-ac97-7000-8000-000000000000")
