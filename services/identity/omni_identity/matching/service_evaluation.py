"""FEBRL4 through a running MatchingService: what a client sees, over gRPC and PostgreSQL.

The store starts empty. File A is loaded with BatchMatchRecords (each record should become a new person);
the first half of B's duplicates is matched with the built-in model; TrainMatchModel learns a model from
the store (which now holds pairs of the same person); the second half is matched with it. A B record counts
as linked to the A record whose person it was LINKED to.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any

from omni.identity.v1 import identity_pb2, identity_pb2_grpc, matching_pb2, matching_pb2_grpc
from omni_identity.matching import febrl
from omni_identity.matching.records import PersonRecord


async def evaluate_febrl4_service(
    stub: matching_pb2_grpc.MatchingServiceStub,
    *,
    sample: int | None = None,
    distractors: int = 0,
    batch_size: int = 500,
    seed: int = 4,
) -> dict[str, Any]:
    """Run FEBRL4 (or a sample of `sample` true pairs plus `distractors` unmatched A records) through the
    service; return precision, recall and F1 for each half of B, overall, and the records per second of the
    loads. The service must hold no other records.
    """
    data = febrl.load()
    duplicate_of = {b: a for a, b in data.true_matches}
    rng = random.Random(seed)
    b_order = sorted(duplicate_of)
    rng.shuffle(b_order)
    b_sample = b_order[:sample] if sample is not None else b_order
    unmatched = sorted(set(range(len(data.a))) - {duplicate_of[b] for b in b_sample})
    a_sample = [duplicate_of[b] for b in b_sample] + (
        rng.sample(unmatched, min(distractors, len(unmatched))) if sample is not None else unmatched
    )
    rng.shuffle(a_sample)

    started = time.perf_counter()
    loaded = await _match_all(stub, [data.a[i] for i in a_sample], "febrl_a", batch_size)
    loaded_at = time.perf_counter()
    new = matching_pb2.MATCH_DECISION_NEW_PERSON
    record_of_person = {r.person_id: i for i, r in zip(a_sample, loaded, strict=True) if r.decision == new}

    half = len(b_sample) // 2
    halves = (b_sample[:half], b_sample[half:])
    first = await _match_all(stub, [data.b[j] for j in halves[0]], "febrl_b", batch_size)
    first_at = time.perf_counter()
    trained = await stub.TrainMatchModel(matching_pb2.TrainMatchModelRequest())
    trained_at = time.perf_counter()
    second = await _match_all(stub, [data.b[j] for j in halves[1]], "febrl_b", batch_size)
    finished = time.perf_counter()

    linked = matching_pb2.MATCH_DECISION_LINKED
    predicted = [
        {
            (record_of_person.get(r.person_id, -1), j)
            for j, r in zip(part, results, strict=True)
            if r.decision == linked
        }
        for part, results in zip(halves, (first, second), strict=True)
    ]
    truth = [{(duplicate_of[j], j) for j in part} for part in halves]
    matched = len(b_sample)
    return {
        "a_records": len(a_sample),
        "b_records": matched,
        "a_new_persons": len(record_of_person),
        "built_in_model": _figures(predicted[0], truth[0]),
        "trained_model": {**_figures(predicted[1], truth[1]), "version": trained.model.version},
        "overall": _figures(predicted[0] | predicted[1], truth[0] | truth[1]),
        "load_records_per_second": round(len(a_sample) / (loaded_at - started), 1),
        "match_records_per_second": round(matched / ((first_at - loaded_at) + (finished - trained_at)), 1),
        "training_seconds": round(trained_at - first_at, 3),
        "trained_pairs": trained.model.trained_pairs,
    }


async def _match_all(
    stub: matching_pb2_grpc.MatchingServiceStub, records: Sequence[PersonRecord], source: str, batch_size: int
) -> list[matching_pb2.MatchResult]:
    results: list[matching_pb2.MatchResult] = []
    for start in range(0, len(records), batch_size):
        chunk = [record_message(r) for r in records[start : start + batch_size]]
        response = await stub.BatchMatchRecords(
            matching_pb2.BatchMatchRecordsRequest(records=chunk, source=source)
        )
        results.extend(response.results)
    return results


def record_message(record: PersonRecord) -> matching_pb2.PersonRecord:
    """A domain record as the request message."""
    message = matching_pb2.PersonRecord(
        given_name=record.given_name,
        surname=record.surname,
        street_number=record.street_number,
        address_1=record.address_1,
        address_2=record.address_2,
        suburb=record.suburb,
        postcode=record.postcode,
        state=record.state,
        identifiers=[],
    )
    if record.date_of_birth is not None:
        birth = record.date_of_birth
        message.date_of_birth.CopyFrom(
            matching_pb2.CalendarDate(year=birth.year, month=birth.month, day=birth.day)
        )
    return message


def _figures(predicted: set[tuple[int, int]], truth: set[tuple[int, int]]) -> dict[str, float]:
    hits = len(predicted & truth)
    precision = hits / len(predicted) if predicted else 0.0
    recall = hits / len(truth) if truth else 0.0
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    return {"precision": round(precision, 5), "recall": round(recall, 5), "f1": round(f1, 5)}


async def evaluate_dedup_service(
    stub: matching_pb2_grpc.MatchingServiceStub,
    *,
    name: str = "febrl3",
    train_on_first_half: bool = False,
    batch_size: int = 500,
    identity: identity_pb2_grpc.IdentityServiceStub | None = None,
) -> dict[str, Any]:
    """Deduplicate a FEBRL file (FEBRL3 by default) through the service, which must hold no other records.

    The file is sent in its order with BatchMatchRecords (soc_sec_id is never sent). With
    train_on_first_half, TrainMatchModel learns a model from the store once the first half is in, and the
    second half is matched with it; otherwise the built-in model decides every record. Two records are
    predicted to be one person when both were filed under the same person (LINKED or NEW_PERSON); a record
    sent to review is filed under nobody. Pairwise precision, recall and F1 over every pair of the file.
    With identity, each person is counted as the person it leads to at the end (GetPerson), so that merges
    made later (cluster repair) join the records filed before them.
    """
    data = febrl.load_dedup(name)
    half = len(data.records) // 2 if train_on_first_half else len(data.records)
    started = time.perf_counter()
    results = await _match_all(stub, data.records[:half], name, batch_size)
    matched_seconds = time.perf_counter() - started
    trained_pairs, training_seconds, version = 0, 0.0, 0
    if half < len(data.records):
        trained_at = time.perf_counter()
        trained = await stub.TrainMatchModel(matching_pb2.TrainMatchModelRequest())
        training_seconds = time.perf_counter() - trained_at
        trained_pairs, version = trained.model.trained_pairs, trained.model.version
        resumed = time.perf_counter()
        results += await _match_all(stub, data.records[half:], name, batch_size)
        matched_seconds += time.perf_counter() - resumed
    now_person: dict[str, str] = {}
    if identity is not None:
        for person_id in sorted({r.person_id for r in results if r.person_id}):
            found = await identity.GetPerson(identity_pb2.GetPersonRequest(person_id=person_id))
            now_person[person_id] = found.person.id
    members: dict[str, list[int]] = {}
    for position, result in enumerate(results):
        if result.person_id:
            members.setdefault(now_person.get(result.person_id, result.person_id), []).append(position)
    predicted = {(a, b) for group in members.values() for k, a in enumerate(group) for b in group[k + 1 :]}
    decisions = [r.decision for r in results]
    several = sum(
        1
        for r in results
        if r.decision == matching_pb2.MATCH_DECISION_REVIEW
        and sum(c.probability >= 0.95 for c in r.candidates) > 1
    )
    return {
        "records": len(results),
        "persons": len(members),
        "true_pairs": len(data.true_matches),
        **_figures(predicted, data.true_matches),
        "predicted_pairs": len(predicted),
        "linked": decisions.count(matching_pb2.MATCH_DECISION_LINKED),
        "new_person": decisions.count(matching_pb2.MATCH_DECISION_NEW_PERSON),
        "review": decisions.count(matching_pb2.MATCH_DECISION_REVIEW),
        "review_several_persons": several,
        "records_per_second": round(len(results) / matched_seconds, 1),
        "training_seconds": round(training_seconds, 3),
        "trained_pairs": trained_pairs,
        "model_version": version,
    }
