"""Decisions about records against stored ones: link, review, new person, in batch order (pure)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterator

import pytest

from omni_identity.matching.blocking import blocking_keys
from omni_identity.matching.matcher import Decision, Policy, StoredRecord, decide_batch
from omni_identity.matching.model import default_model
from omni_identity.matching.records import NormalisedRecord

MICHAELA = NormalisedRecord(
    given_name="michaela",
    surname="neumann",
    date_of_birth="19151111",
    street_number="8",
    address_1="stanley street",
    address_2="miami",
    suburb="winston hills",
    postcode="4223",
    state="nsw",
)
PERSON = uuid.UUID(int=1)


def stored(record: NormalisedRecord, person: uuid.UUID = PERSON, number: int = 100) -> StoredRecord:
    """A stored record with its blocking keys."""
    return StoredRecord(uuid.UUID(int=number), person, record, tuple(blocking_keys(record)))


@pytest.fixture
def new_id() -> Callable[[], uuid.UUID]:
    counter: Iterator[int] = iter(range(1000, 100_000))
    return lambda: uuid.UUID(int=next(counter))


def test_no_candidate_makes_a_new_person(new_id: Callable[[], uuid.UUID]) -> None:
    [outcome] = decide_batch([MICHAELA], [], default_model(), Policy(), new_id=new_id)
    assert outcome.decision is Decision.NEW_PERSON
    assert outcome.candidates == ()
    assert outcome.stored is not None and outcome.stored.person_id == outcome.person_id
    assert outcome.record_id == outcome.stored.id


def test_a_close_record_is_linked_and_filed(new_id: Callable[[], uuid.UUID]) -> None:
    typo = NormalisedRecord(**{**MICHAELA.__dict__, "surname": "neuman", "street_number": "9"})
    [outcome] = decide_batch([typo], [stored(MICHAELA)], default_model(), Policy(), new_id=new_id)
    assert outcome.decision is Decision.LINKED
    assert outcome.person_id == PERSON
    assert outcome.stored is not None and outcome.stored.person_id == PERSON
    best = outcome.candidates[0]
    assert best.probability >= 0.95 and best.person_id == PERSON
    levels = {c.field: c.level for c in best.comparisons}
    assert levels["surname"] == "jaro_winkler_0.92"
    assert levels["street_number"] == "near"


def test_an_identical_record_is_linked_without_filing_it_again(new_id: Callable[[], uuid.UUID]) -> None:
    [outcome] = decide_batch([MICHAELA], [stored(MICHAELA)], default_model(), Policy(), new_id=new_id)
    assert outcome.decision is Decision.LINKED
    assert outcome.stored is None
    assert outcome.record_id == uuid.UUID(int=100)


def test_between_the_thresholds_goes_to_review(new_id: Callable[[], uuid.UUID]) -> None:
    partial = NormalisedRecord(given_name="michaela", surname="neumann", postcode="4223")
    [outcome] = decide_batch([partial], [stored(MICHAELA)], default_model(), Policy(), new_id=new_id)
    assert 0.6 <= outcome.probability < 0.95
    assert outcome.decision is Decision.REVIEW
    assert outcome.person_id is None and outcome.stored is None
    assert outcome.candidates[0].person_id == PERSON


def test_two_persons_above_the_link_threshold_go_to_review(new_id: Callable[[], uuid.UUID]) -> None:
    twins = [stored(MICHAELA, uuid.UUID(int=1), 100), stored(MICHAELA, uuid.UUID(int=2), 101)]
    [outcome] = decide_batch([MICHAELA], twins, default_model(), Policy(), new_id=new_id)
    assert outcome.decision is Decision.REVIEW
    assert {c.person_id for c in outcome.candidates} == {uuid.UUID(int=1), uuid.UUID(int=2)}


def test_persons_that_match_each_other_are_proposed_for_a_merge(new_id: Callable[[], uuid.UUID]) -> None:
    # One person filed twice (a split): the next record of theirs matches both, and they match each other.
    split = [
        stored(MICHAELA, uuid.UUID(int=2), 100),
        stored(dataclasses.replace(MICHAELA, address_2=""), uuid.UUID(int=1), 101),
    ]
    [outcome] = decide_batch([MICHAELA], split, default_model(), Policy(), new_id=new_id)
    assert outcome.decision is Decision.REVIEW
    assert outcome.proposed_merge == (uuid.UUID(int=1), uuid.UUID(int=2))


def test_persons_that_do_not_match_each_other_are_not_proposed(new_id: Callable[[], uuid.UUID]) -> None:
    # The record matches one person on names and birth date, another on surname and address; those two
    # share only a surname.
    by_name = NormalisedRecord(given_name="michaela", surname="neumann", date_of_birth="19151111")
    by_address = dataclasses.replace(MICHAELA, given_name="", date_of_birth="")
    candidates = [stored(by_name, uuid.UUID(int=1), 100), stored(by_address, uuid.UUID(int=2), 101)]
    [outcome] = decide_batch([MICHAELA], candidates, default_model(), Policy(), new_id=new_id)
    assert outcome.decision is Decision.REVIEW
    assert sum(c.probability >= 0.95 for c in outcome.candidates) == 2
    assert outcome.proposed_merge == ()


def test_a_relative_at_the_same_address_is_not_linked(new_id: Callable[[], uuid.UUID]) -> None:
    brother = NormalisedRecord(**{**MICHAELA.__dict__, "given_name": "brendan", "date_of_birth": "19800101"})
    [outcome] = decide_batch([brother], [stored(MICHAELA)], default_model(), Policy(), new_id=new_id)
    # The shared address outweighs the different name and birth date, but that is what a household looks like.
    assert outcome.probability >= 0.95
    assert outcome.decision is Decision.REVIEW
    [unguarded] = decide_batch(
        [brother], [stored(MICHAELA)], default_model(), Policy(review_relatives=False), new_id=new_id
    )
    assert unguarded.decision is Decision.LINKED


def test_a_different_person_elsewhere_is_new(new_id: Callable[[], uuid.UUID]) -> None:
    other = NormalisedRecord(
        given_name="brendan", surname="neumann", date_of_birth="19800101", postcode="4223", state="vic"
    )
    [outcome] = decide_batch([other], [stored(MICHAELA)], default_model(), Policy(), new_id=new_id)
    assert outcome.decision is Decision.NEW_PERSON
    assert outcome.person_id != PERSON
    assert outcome.candidates[0].probability < 0.6


def test_candidates_are_one_per_person_best_record_first(new_id: Callable[[], uuid.UUID]) -> None:
    older = NormalisedRecord(**{**MICHAELA.__dict__, "address_1": "old road", "street_number": "77"})
    records = [stored(older, PERSON, 100), stored(MICHAELA, PERSON, 101)]
    [outcome] = decide_batch([MICHAELA], records, default_model(), Policy(), new_id=new_id)
    assert [c.record_id for c in outcome.candidates] == [uuid.UUID(int=101)]


def test_a_batch_sees_the_records_it_filed_before(new_id: Callable[[], uuid.UUID]) -> None:
    typo = NormalisedRecord(**{**MICHAELA.__dict__, "given_name": "micheala"})
    first, second, third = decide_batch(
        [MICHAELA, typo, MICHAELA], [], default_model(), Policy(), new_id=new_id
    )
    assert first.decision is Decision.NEW_PERSON
    assert second.decision is Decision.LINKED and second.person_id == first.person_id
    assert third.decision is Decision.LINKED and third.stored is None
    assert third.record_id == first.record_id


def test_at_most_max_candidates_are_returned(new_id: Callable[[], uuid.UUID]) -> None:
    crowd = [
        stored(
            NormalisedRecord(given_name=f"person{i}", surname="x", postcode="4223"),
            uuid.UUID(int=i + 1),
            100 + i,
        )
        for i in range(8)
    ]
    [outcome] = decide_batch([MICHAELA], crowd, default_model(), Policy(max_candidates=3), new_id=new_id)
    assert len(outcome.candidates) == 3


def test_thresholds_must_be_ordered() -> None:
    with pytest.raises(ValueError):
        Policy(link_threshold=0.5, review_threshold=0.9)


EMAIL = "email:michaela@example.com"
HOLDER = uuid.UUID(int=2)
WITH_EMAIL = NormalisedRecord(**{**MICHAELA.__dict__, "identifiers": frozenset({EMAIL})})


def test_the_holder_of_an_identifier_takes_a_record_without_candidates(
    new_id: Callable[[], uuid.UUID],
) -> None:
    [outcome] = decide_batch(
        [WITH_EMAIL], [], default_model(), Policy(), new_id=new_id, holders={EMAIL: HOLDER}
    )
    assert outcome.decision is Decision.LINKED and outcome.person_id == HOLDER
    assert outcome.holders == (HOLDER,)
    assert outcome.stored is not None and outcome.stored.origin == HOLDER


@pytest.mark.parametrize("holder", [PERSON, HOLDER])
def test_a_holder_other_than_the_linked_person_sends_the_record_to_review(
    new_id: Callable[[], uuid.UUID], holder: uuid.UUID
) -> None:
    [outcome] = decide_batch(
        [WITH_EMAIL], [stored(MICHAELA)], default_model(), Policy(), new_id=new_id, holders={EMAIL: holder}
    )
    expected = Decision.LINKED if holder == PERSON else Decision.REVIEW
    assert outcome.decision is expected and outcome.holders == (holder,)
    assert (outcome.stored is None) == (expected is Decision.REVIEW)


def test_a_linked_record_is_filed_under_the_person_its_match_was_filed_under(
    new_id: Callable[[], uuid.UUID],
) -> None:
    earlier = StoredRecord(uuid.UUID(int=100), PERSON, MICHAELA, tuple(blocking_keys(MICHAELA)), HOLDER)
    [outcome] = decide_batch([MICHAELA], [earlier], default_model(), Policy(), new_id=new_id)
    assert outcome.decision is Decision.LINKED and outcome.stored is None
    typo = NormalisedRecord(**{**MICHAELA.__dict__, "surname": "neuman"})
    [outcome] = decide_batch([typo], [earlier], default_model(), Policy(), new_id=new_id)
    assert outcome.stored is not None and outcome.stored.person_id == PERSON
    assert outcome.stored.origin == HOLDER
