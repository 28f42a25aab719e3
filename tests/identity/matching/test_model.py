"""Fellegi-Sunter weights and probabilities, and the stored form of a model (pure)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from omni_identity.matching.comparison import COMPARISONS, FIELD_INDEX, MISSING
from omni_identity.matching.model import MatchModel, default_model, model_from_arrays, probability


def test_weights_are_log2_of_m_over_u() -> None:
    field = default_model().fields[FIELD_INDEX["given_name"]]
    assert field.weights()[0] == pytest.approx(math.log2(field.m[0] / field.u[0]))


def test_a_pair_with_every_field_missing_scores_the_prior() -> None:
    model = default_model()
    vectors = np.full((1, len(COMPARISONS)), MISSING, dtype=np.int8)
    assert model.probabilities(vectors)[0] == pytest.approx(model.prior)


def test_the_weight_is_the_prior_plus_the_fields() -> None:
    model = default_model()
    vector = np.full((1, len(COMPARISONS)), MISSING, dtype=np.int8)
    vector[0, FIELD_INDEX["surname"]] = 0
    vector[0, FIELD_INDEX["date_of_birth"]] = 2
    expected = (
        math.log2(model.prior / (1 - model.prior))
        + model.fields[FIELD_INDEX["surname"]].weights()[0]
        + model.fields[FIELD_INDEX["date_of_birth"]].weights()[2]
    )
    assert model.match_weights(vector)[0] == pytest.approx(expected)
    assert model.probabilities(vector)[0] == pytest.approx(1 / (1 + 2**-expected))


def test_agreement_raises_and_disagreement_lowers_the_probability() -> None:
    model = default_model()
    agree = np.zeros((1, len(COMPARISONS)), dtype=np.int8)
    disagree = np.array([[len(c.levels) - 1 for c in COMPARISONS]], dtype=np.int8)
    assert model.probabilities(agree)[0] > 0.999
    assert model.probabilities(disagree)[0] < 0.001


def test_probability_saturates_without_overflow() -> None:
    np.testing.assert_allclose(probability(np.array([-5000.0, 0.0, 5000.0])), [0.0, 0.5, 1.0], atol=1e-12)


def test_json_round_trip() -> None:
    model = dataclasses.replace(default_model(), version=3, trained_pairs=10, iterations=4)
    again = MatchModel.from_json(3, model.to_json(), trained_pairs=10, iterations=4)
    assert again == model


def test_a_model_must_fit_the_comparisons() -> None:
    data = default_model().to_json()
    data["fields"] = data["fields"][:-1]
    with pytest.raises(ValueError):
        MatchModel.from_json(1, data)


def test_arrays_are_clipped_away_from_zero_and_one() -> None:
    m = [np.eye(len(c.levels))[0] for c in COMPARISONS]
    model = model_from_arrays(1, 1.0, m, m)
    assert 0 < model.prior < 1
    assert all(0 < p < 1 for f in model.fields for p in (*f.m, *f.u))
