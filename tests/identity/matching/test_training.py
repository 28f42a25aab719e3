"""Training on stored records: believable models only (pure)."""

from __future__ import annotations

import random

import pytest

from omni_identity.matching.blocking import blocking_keys
from omni_identity.matching.comparison import FIELD_INDEX
from omni_identity.matching.model import default_model
from omni_identity.matching.records import NormalisedRecord
from omni_identity.matching.training import TrainingError, train

GIVEN = ["ann", "bob", "cara", "dev", "eli", "fay", "gus", "hana", "ivan", "jo", "kim", "lea", "max", "noor"]
SURNAMES = ["smith", "jones", "brown", "neumann", "green", "parr", "howie", "lund", "broadby", "leslie"]
SYLLABLES = ["ka", "ri", "mon", "de", "sal", "to", "ver", "lin", "os", "ba", "nu", "che"]


def word(rng: random.Random) -> str:
    """A made-up name of three syllables."""
    return "".join(rng.choice(SYLLABLES) for _ in range(3))


def people(n: int, rng: random.Random) -> list[NormalisedRecord]:
    """Distinct people in a handful of postcodes."""
    return [
        NormalisedRecord(
            given_name=rng.choice(GIVEN),
            surname=rng.choice(SURNAMES),
            date_of_birth=f"{rng.randint(1930, 2000)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}",
            street_number=str(rng.randint(1, 200)),
            address_1=f"{rng.choice(SURNAMES)} street",
            suburb=rng.choice(["dapto", "lalor", "dover", "gorokan"]),
            postcode=str(rng.randint(2000, 2030)),
            state=rng.choice(["nsw", "vic"]),
        )
        for _ in range(n)
    ]


def typo(text: str, rng: random.Random) -> str:
    """The text with two neighbouring characters swapped."""
    if len(text) < 3:
        return text
    i = rng.randrange(len(text) - 1)
    return text[:i] + text[i + 1] + text[i] + text[i + 2 :]


def corrupt(record: NormalisedRecord, rng: random.Random) -> NormalisedRecord:
    """A copy of the record with one field mistyped or left out, as another channel might send it."""
    changed = dict(record.__dict__)
    field = rng.choice(["given_name", "surname", "address_1", "street_number", "postcode", "date_of_birth"])
    changed[field] = typo(changed[field], rng) if rng.random() < 0.7 else ""
    return NormalisedRecord(**changed)


def test_training_on_records_with_duplicates_learns_what_agreement_means() -> None:
    rng = random.Random(5)
    originals = [NormalisedRecord(**{**r.__dict__, "surname": word(rng)}) for r in people(600, rng)]
    duplicates = [corrupt(r, rng) for r in originals[:300]]
    records = originals + duplicates
    result = train(records, [blocking_keys(r) for r in records], default_model(), version=1)
    model = result.model
    assert result.candidate_pairs > 300
    # The prior is that of a random pair: about 300 matching pairs among all 900 x 899 / 2.
    assert 300 <= model.prior * len(records) * (len(records) - 1) / 2 <= 400
    for name in ("given_name", "date_of_birth"):
        field = model.fields[FIELD_INDEX[name]]
        assert field.weights()[0] > 3
        assert field.weights()[-1] < -2


def test_records_without_duplicates_give_no_model() -> None:
    records = people(600, random.Random(9))
    with pytest.raises(TrainingError):
        train(records, [blocking_keys(r) for r in records], default_model(), version=1)


def test_too_few_records_give_no_model() -> None:
    records = people(3, random.Random(1))
    with pytest.raises(TrainingError):
        train(records, [blocking_keys(r) for r in records], default_model(), version=1)
