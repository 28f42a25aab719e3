"""The identity rules as pure computations: limits, windows, trust, which identifier is set aside, tombstones."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from omni_identity.changes import Held, RefusalRule, ResolveRequest
from omni_identity.identifier_types import IdentifierTypeConfig, IdentifierTypeRegistry, Trust
from omni_identity.normalise import IdentifierKey
from omni_identity.resolution import MissingTallies, Resolver
from omni_identity.rules import Rules, Tally

NOW = datetime(2025, 3, 1, tzinfo=UTC)
RULES = Rules(IdentifierTypeRegistry.defaults())
P1, P2 = uuid.UUID(int=1), uuid.UUID(int=2)


def ids() -> Callable[[], uuid.UUID]:
    counter: Iterator[int] = iter(range(1000, 10**6))
    return lambda: uuid.UUID(int=next(counter))


def key(type_: str, value: str) -> IdentifierKey:
    return IdentifierKey(type_, value)


def resolver(
    holders: dict[IdentifierKey, uuid.UUID],
    tallies: dict[uuid.UUID, Tally] | None = None,
    *,
    rules: Rules = RULES,
    ignored: frozenset[IdentifierKey] = frozenset(),
) -> Resolver:
    """A resolver with rules; tallies default to what the holders hold (all recent)."""
    if tallies is None:
        tallies = {}
        for k, person_id in holders.items():
            if k.type in rules.watched:
                counts = tallies.setdefault(person_id, {}).setdefault(k.type, [0, 0])
                counts[0] += 1
                counts[1] += 1
    held = {k: Held(p, uuid.uuid5(uuid.NAMESPACE_OID, k.value)) for k, p in holders.items()}
    return Resolver(held, now=NOW, new_id=ids(), rules=rules, tallies=tallies, ignored=ignored)


def req(*keys: IdentifierKey, source: str = "app") -> ResolveRequest:
    return ResolveRequest(identifiers=keys, source=source)


MOM, DAD, TABLET = key("user_id", "mom"), key("user_id", "dad"), key("device_id", "tablet")


def test_a_shared_device_does_not_fuse_a_new_account_holder_into_the_owner() -> None:
    changes = resolver({MOM: P1, TABLET: P1}).resolve_all([req(DAD, TABLET)])

    [resolution] = changes.resolutions
    assert resolution.created and resolution.person_id != P1
    assert resolution.added_identifiers == [DAD]
    [link] = resolution.refused_links
    assert (link.key, link.holder_id, link.rule, link.rule_type) == (TABLET, P1, RefusalRule.LIMIT, "user_id")
    assert link.resolved_person_id == resolution.person_id
    assert set(link.person_ids) == {P1, resolution.person_id}
    assert "at most 1 user_id" in link.description
    assert changes.refused_links == [link]
    assert not changes.merges


def test_a_cookie_seen_with_two_account_holders_does_not_merge_them() -> None:
    cookie = key("anonymous_id", "c")
    changes = resolver({MOM: P1, cookie: P1, DAD: P2}).resolve_all([req(DAD, cookie)])

    [resolution] = changes.resolutions
    assert resolution.person_id == P2 and not resolution.merged_person_ids
    [link] = resolution.refused_links
    assert link.key == cookie and link.holder_id == P1
    assert not changes.merged_into


def test_a_second_user_id_is_not_stored_on_a_person() -> None:
    changes = resolver({MOM: P1}).resolve_all([req(MOM, DAD)])

    [resolution] = changes.resolutions
    assert resolution.person_id == P1 and resolution.added_identifiers == []
    [link] = resolution.refused_links
    assert link.key == DAD and link.holder_id is None
    assert changes.new_identifiers == []


def test_the_lowest_priority_conflicting_identifier_goes_first() -> None:
    email = key("email", "mom@example.com")
    # Email (priority 40) and device (70) both lead to the person with another user id: the device goes,
    # then the email, and the new user id starts its own person.
    changes = resolver({MOM: P1, TABLET: P1, email: P1}).resolve_all([req(email, DAD, TABLET)])

    [resolution] = changes.resolutions
    assert [link.key for link in resolution.refused_links] == [TABLET, email]
    assert resolution.created and resolution.added_identifiers == [DAD]


def test_a_windowed_limit_counts_only_recent_values() -> None:
    cookies = [key("anonymous_id", f"c{i}") for i in range(6)]
    holders = dict.fromkeys(cookies[:5], P1)
    recent = resolver(holders, {P1: {"anonymous_id": [5, 5]}}).resolve_all([req(cookies[0], cookies[5])])
    assert [link.key for link in recent.resolutions[0].refused_links] == [cookies[5]]

    old = resolver(holders, {P1: {"anonymous_id": [2, 5]}}).resolve_all([req(cookies[0], cookies[5])])
    assert old.resolutions[0].refused_links == []
    assert old.resolutions[0].added_identifiers == [cookies[5]]


def test_a_person_already_over_a_lowered_limit_is_not_refused_what_adds_nothing() -> None:
    emails = [key("email", f"e{i}@example.com") for i in range(3)]
    types = [
        IdentifierTypeConfig(name="email", kind="email", limit=1),
        IdentifierTypeConfig(name="device_id"),
    ]
    rules = Rules(IdentifierTypeRegistry(types))
    device = key("device_id", "d")
    changes = resolver(dict.fromkeys(emails, P1), rules=rules).resolve_all([req(emails[0], device)])

    assert changes.resolutions[0].refused_links == []
    assert changes.resolutions[0].added_identifiers == [device]


def test_limits_hold_across_a_batch() -> None:
    cookies = [key("anonymous_id", f"c{i}") for i in range(8)]
    changes = resolver({MOM: P1}).resolve_all([req(MOM, cookie) for cookie in cookies])

    assert [len(r.added_identifiers) for r in changes.resolutions] == [1] * 5 + [0] * 3
    assert [len(r.refused_links) for r in changes.resolutions] == [0] * 5 + [1] * 3


def test_merging_persons_adds_their_counts() -> None:
    cookies = [key("anonymous_id", f"c{i}") for i in range(6)]
    holders = {**dict.fromkeys(cookies[:3], P1), **dict.fromkeys(cookies[3:], P2)}
    changes = resolver(holders).resolve_all([req(cookies[0], cookies[3])])

    # 3 + 3 cookies exceed 5 a week: the link is refused, the newer person's cookie set aside.
    [resolution] = changes.resolutions
    assert resolution.person_id == P1
    assert [link.key for link in resolution.refused_links] == [cookies[3]]


def test_a_low_trust_identifier_alone_does_not_join_two_high_trust_identifiers() -> None:
    card, other_card = key("loyalty_card", "L1"), key("loyalty_card", "L2")
    changes = resolver({card: P1, TABLET: P1}).resolve_all([req(TABLET, other_card)])

    [resolution] = changes.resolutions
    assert resolution.created
    [link] = resolution.refused_links
    assert (link.key, link.rule, link.rule_type) == (TABLET, RefusalRule.TRUST, "device_id")


def test_a_medium_trust_identifier_may_join_high_trust_ones() -> None:
    card, other_card, email = (
        key("loyalty_card", "L1"),
        key("loyalty_card", "L2"),
        key("email", "a@example.com"),
    )
    changes = resolver({card: P1, email: P1}).resolve_all([req(email, other_card)])

    assert changes.resolutions[0].person_id == P1
    assert changes.resolutions[0].added_identifiers == [other_card]


def test_a_cookie_still_brings_new_contact_details_to_a_known_account() -> None:
    cookie, email = key("anonymous_id", "c"), key("email", "new@example.com")
    changes = resolver({MOM: P1, cookie: P1}).resolve_all([req(cookie, email)])

    assert changes.resolutions[0].person_id == P1 and changes.resolutions[0].refused_links == []


def test_the_same_refusal_twice_in_a_batch_is_one_record_counted_twice() -> None:
    changes = resolver({MOM: P1}).resolve_all([req(MOM, DAD), req(MOM, DAD)])

    [link] = changes.refused_links
    assert link.count == 2
    assert changes.resolutions[0].refused_links[0] is changes.resolutions[1].refused_links[0]


def test_custom_priorities_decide_what_is_set_aside() -> None:
    types = [
        IdentifierTypeConfig(name="account", trust=Trust.HIGH, limit=1, priority=50),
        IdentifierTypeConfig(name="badge", limit=1, priority=10),
    ]
    rules = Rules(IdentifierTypeRegistry(types))
    a1, a2, b1 = key("account", "1"), key("account", "2"), key("badge", "b")
    # Person 1 holds account 1 and badge b; account 2 (priority 50) is now less important than the badge.
    changes = resolver({a1: P1, b1: P1}, rules=rules).resolve_all([req(b1, a2)])
    assert [link.key for link in changes.resolutions[0].refused_links] == [a2]
    assert changes.resolutions[0].person_id == P1


def test_identifiers_of_forgotten_persons_are_ignored() -> None:
    gone, cookie = key("email", "gone@example.com"), key("anonymous_id", "c")
    changes = resolver({}, ignored=frozenset({gone})).resolve_all([req(gone), req(gone, cookie)])

    only, mixed = changes.resolutions
    assert only.forgotten and only.person_id is None and only.ignored_identifiers == [gone]
    assert mixed.created and mixed.added_identifiers == [cookie] and mixed.ignored_identifiers == [gone]
    assert [n.key for n in changes.new_identifiers] == [cookie]


def test_tallies_count_recent_values_per_window() -> None:
    week_old = NOW - timedelta(days=8)
    tally = RULES.tally(
        [("anonymous_id", NOW), ("anonymous_id", week_old), ("user_id", week_old), ("nickname", NOW)], NOW
    )
    assert tally == {"anonymous_id": [1, 2], "user_id": [1, 1]}
    assert RULES.merge_objection({P1: {"user_id": [1, 1]}, P2: {"user_id": [1, 1]}}) is not None
    assert RULES.merge_objection({P1: {"user_id": [1, 1]}, P2: {"email": [1, 1]}}) is None


def test_counts_of_stored_persons_are_asked_for_only_when_a_rule_needs_them() -> None:
    cookie, email = key("anonymous_id", "c"), key("email", "a@example.com")
    held = {MOM: Held(P1, uuid.uuid4())}

    def lazy() -> Resolver:
        return Resolver(held, now=NOW, new_id=ids(), rules=RULES, tallies=None)

    # New persons, and known identifiers alone, need no stored counts.
    assert lazy().resolve_all([req(cookie, email), req(MOM), req(cookie, key("device_id", "d"))]).changed
    # Adding a counted value to a stored person does.
    with pytest.raises(MissingTallies):
        lazy().resolve_all([req(MOM, cookie)])
