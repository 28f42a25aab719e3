"""Which of a survivor's identifiers go back to a restored person when a merge is undone (pure)."""

from __future__ import annotations

import uuid

from omni_identity.normalise import IdentifierKey
from omni_identity.unmerge import HeldIdentifier, split

SURVIVOR, RESTORED, EARLIER, LATER = (uuid.UUID(int=n) for n in (1, 2, 3, 4))


def held(n: int, attached_to: uuid.UUID, *via: int) -> HeldIdentifier:
    return HeldIdentifier(
        uuid.UUID(int=100 + n),
        IdentifierKey("device_id", f"d{n}"),
        attached_to,
        tuple(uuid.UUID(int=100 + v) for v in via),
    )


def test_identifiers_that_came_with_the_restored_person_and_its_own_merges_go_back() -> None:
    own, its_merged, survivors = held(1, RESTORED), held(2, EARLIER), held(3, SURVIVOR)
    parts = split([own, its_merged, survivors], {RESTORED, EARLIER})
    assert parts.came_with == (own, its_merged)
    assert parts.found_through == ()


def test_identifiers_found_only_through_the_restored_side_follow_it_in_chains() -> None:
    own = held(1, RESTORED)
    # Attached to the survivor after the merge, through the restored person's identifier, then through that.
    first, second = held(5, SURVIVOR, 1), held(6, SURVIVOR, 5)
    parts = split([second, own, first], {RESTORED})
    assert parts.found_through == (first, second)
    assert [h.id for h in parts.moved] == [own.id, first.id, second.id]


def test_identifiers_found_through_both_sides_or_others_stay() -> None:
    own, survivors, other = held(1, RESTORED), held(2, SURVIVOR), held(3, LATER)
    both = held(4, SURVIVOR, 1, 2)
    through_other = held(5, SURVIVOR, 3)
    through_gone = held(6, SURVIVOR, 99)
    new_person = held(7, SURVIVOR)
    parts = split([own, survivors, other, both, through_other, through_gone, new_person], {RESTORED})
    assert parts.moved == (own,)
