"""The order of the levels' weights in every model the matcher uses: the built-in one and those trained on
the FEBRL files (deduplication within FEBRL1-3, both halves of FEBRL3, linkage of FEBRL4's two files).

An exact agreement must never weigh less than a partial one: a model where a postcode one digit off is
stronger evidence than the same postcode links different people who merely live nearby (pure).
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable

import numpy as np
import pytest

from omni_identity.matching import febrl
from omni_identity.matching.blocking import blocking_keys
from omni_identity.matching.comparison import COMPARISONS, FIELD_INDEX, MISSING, compare
from omni_identity.matching.matcher import Decision, Policy, decide_batch
from omni_identity.matching.model import FieldParameters, MatchModel, default_model, monotone
from omni_identity.matching.normalise import normalise_record
from omni_identity.matching.records import NormalisedRecord, PersonRecord
from omni_identity.matching.training import train


def _trained(records: list[PersonRecord], right: list[PersonRecord] | None = None) -> MatchModel:
    left = [normalise_record(r) for r in records]
    other = [normalise_record(r) for r in right] if right is not None else None
    return train(
        left,
        [blocking_keys(r) for r in left],
        default_model(),
        version=1,
        right=other,
        right_keys=[blocking_keys(r) for r in other] if other is not None else None,
    ).model


@pytest.fixture(scope="module")
def models() -> dict[str, MatchModel]:
    """The built-in model and one trained on each FEBRL file (and each half of FEBRL3)."""
    trained = {"built-in": default_model()}
    for name in ("febrl1", "febrl2", "febrl3"):
        trained[name] = _trained(febrl.load_dedup(name).records)
    febrl3 = febrl.load_dedup("febrl3").records
    trained["febrl3 first half"] = _trained(febrl3[: len(febrl3) // 2])
    trained["febrl3 second half"] = _trained(febrl3[len(febrl3) // 2 :])
    linkage = febrl.load()
    trained["febrl4 a x b"] = _trained(linkage.a, linkage.b)
    return trained


def test_no_partial_level_outweighs_an_exact_one_in_any_model(models: dict[str, MatchModel]) -> None:
    for name, model in models.items():
        for field in model.fields:
            weights = field.weights()
            for better, worse in itertools.pairwise(weights):
                assert worse <= better + 1e-9, (name, field.field, [round(w, 2) for w in weights])


def _only(field: str, level: int) -> np.ndarray:
    """A pair agreeing on nothing but one field at one level (the other fields disagree)."""
    vector = np.array([[len(c.levels) - 1 for c in COMPARISONS]], dtype=np.int8)
    vector[0, FIELD_INDEX["identifiers"]] = MISSING
    vector[0, FIELD_INDEX[field]] = level
    return vector


def test_the_same_postcode_is_stronger_evidence_than_a_neighbouring_one(
    models: dict[str, MatchModel],
) -> None:
    # Two records agreeing only on postcode "2119", and two agreeing only on "2119" vs "2118".
    left = NormalisedRecord(given_name="ann", surname="lee", postcode="2119", date_of_birth="19700101")
    same = NormalisedRecord(given_name="zoe", surname="oakes", postcode="2119", date_of_birth="19851212")
    near = NormalisedRecord(given_name="zoe", surname="oakes", postcode="2118", date_of_birth="19851212")
    vectors = compare([left, left], [same, near])
    assert vectors[0, FIELD_INDEX["postcode"]] == 0
    assert vectors[1, FIELD_INDEX["postcode"]] == 1
    for name, model in models.items():
        p_same, p_near = model.probabilities(vectors)
        assert p_same >= p_near, name
        assert p_near < 0.01, name
        for field in ("postcode", "date_of_birth", "given_name", "surname", "suburb", "address_1"):
            assert model.probabilities(_only(field, 0))[0] >= model.probabilities(_only(field, 1))[0], (
                name,
                field,
            )


def test_namesakes_in_neighbouring_postcodes_are_not_linked(models: dict[str, MatchModel]) -> None:
    # FEBRL2's rec-3654-org and rec-262-org: two people, same name, postcodes 7006 / 7004, nothing else alike.
    first = PersonRecord(
        given_name="mitchell",
        surname="egan",
        street_number="7",
        address_1="bacchus circuit",
        suburb="myrtleford",
        postcode="7006",
        state="nsw",
        date_of_birth=febrl.parse_date("19381218"),
    )
    second = PersonRecord(
        given_name="mitchell",
        surname="egan",
        street_number="4",
        address_1="steffanoni circuit",
        address_2="brentwood vlge",
        suburb="gwynneville",
        postcode="7004",
        state="nsw",
        date_of_birth=febrl.parse_date("19980507"),
    )
    records = [normalise_record(first), normalise_record(second)]
    for name, model in models.items():
        outcomes = decide_batch(records, [], model, Policy(), new_id=_ids())
        assert [o.decision for o in outcomes] == [Decision.NEW_PERSON, Decision.NEW_PERSON], name


def test_monotone_caps_a_partial_level_at_the_exact_ones_weight() -> None:
    field = FieldParameters("postcode", ("exact", "near", "else"), (0.4, 0.5, 0.1), (0.2, 0.05, 0.75))
    fixed = monotone(field)
    weights = fixed.weights()
    assert weights[0] == pytest.approx(weights[1])
    assert weights[1] > weights[2]
    assert sum(fixed.m) == pytest.approx(1.0)
    assert fixed.u == field.u
    ordered = FieldParameters("state", ("exact", "else"), (0.9, 0.1), (0.3, 0.7))
    assert monotone(ordered) is ordered


def _ids() -> Callable[[], uuid.UUID]:
    counter = itertools.count(1)
    return lambda: uuid.UUID(int=next(counter))
