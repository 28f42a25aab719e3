"""The stable random bucket (holdouts, A/B splits): the same person always lands in the same bucket for a
salt, buckets spread evenly and independently across salts, and a segment on a range selects by it."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime

import grpc
import pytest

from omni.segmentation.v1 import segmentation_pb2 as pb
from omni_kit.errors import status_details
from omni_segmentation.rules import PersonFacts, RandomBucket, bucket, evaluate, next_change

from .builders import all_of, trait
from .support import Segmentation, eventually, person, unique

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def split(salt: str, lowest: int, highest: int) -> pb.Condition:
    return pb.Condition(random_bucket=pb.RandomBucketCondition(salt=salt, lowest=lowest, highest=highest))


def test_buckets_are_stable_even_and_independent_per_salt() -> None:
    ids = [uuid.UUID(int=i * 7919 + 12345) for i in range(20_000)]
    first = [bucket(p, "holdout-2026") for p in ids]
    assert first == [bucket(p, "holdout-2026") for p in ids]
    counts = Counter(first)
    assert set(counts) == set(range(100))
    assert max(counts.values()) < 260 and min(counts.values()) > 140  # 200 expected in each
    other = [bucket(p, "subject-line-test") for p in ids]
    in_both = sum(1 for a, b in zip(first, other, strict=True) if a < 10 and b < 10)
    assert 120 < in_both < 280  # 1% of 20,000 if independent


def test_a_range_holds_for_the_buckets_in_it_and_never_changes_by_time() -> None:
    someone = uuid.UUID("01a25286-1d7c-7ea8-8a34-66f0106573d9")
    number = bucket(someone, "s")
    facts = PersonFacts(person_id=someone)
    assert evaluate(RandomBucket("s", number, number), facts, NOW)
    assert evaluate(RandomBucket("s", 0, 99), facts, NOW)
    assert not evaluate(RandomBucket("s", (number + 1) % 100, (number + 1) % 100), facts, NOW)
    assert next_change(RandomBucket("s", 0, 9), facts, NOW) is None
    assert not evaluate(RandomBucket("s", 0, 99), PersonFacts(), NOW)  # no person, no bucket


async def test_a_holdout_segment_and_its_preview(segmentation: Segmentation) -> None:
    tag = unique("split")
    persons = [person() for _ in range(40)]
    for someone in persons:
        await segmentation.profile_changed(someone, traits={"tag": tag}, changed=("traits",))
    ours = trait("tag", pb.COMPARISON_EQ, tag)
    await segmentation.consumed(await segmentation.profile_changed(person(), traits={}, changed=("traits",)))
    expected = sorted(p for p in persons if bucket(uuid.UUID(p), tag) < 50)
    preview = await segmentation.stub.PreviewSegment(
        pb.PreviewSegmentRequest(condition=all_of(ours, split(tag, 0, 49)), sample_size=100)
    )
    assert list(preview.sample_person_ids) == expected
    treated = await segmentation.create(tag, all_of(ours, split(tag, 0, 49)))
    page = await _members(segmentation, treated.id, len(expected))
    assert page == expected
    explained = await segmentation.stub.ExplainSegmentMembership(
        pb.ExplainSegmentMembershipRequest(segment_id=treated.id, person_id=expected[0])
    )
    node = explained.condition.children[1]
    assert (node.kind, node.holds, node.count) == ("random_bucket", True, bucket(uuid.UUID(expected[0]), tag))


async def _members(segmentation: Segmentation, segment_id: str, count: int) -> list[str]:
    async def listed() -> list[str]:
        page = await segmentation.stub.ListSegmentMembers(
            pb.ListSegmentMembersRequest(segment_id=segment_id, page_size=1000)
        )
        ids = [m.person_id for m in page.members]
        return ids if len(ids) == count else []

    return await eventually(listed, timeout_s=10)


@pytest.mark.parametrize(
    ("condition", "fields"),
    [
        (split("s", 10, 5), {"segment.condition.random_bucket"}),
        (
            split("s", -1, 100),
            {"segment.condition.random_bucket.lowest", "segment.condition.random_bucket.highest"},
        ),
        (split("a\x00b", 0, 9), {"segment.condition.random_bucket.salt"}),
    ],
)
async def test_bad_ranges(segmentation: Segmentation, condition: pb.Condition, fields: set[str]) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await segmentation.stub.CreateSegment(
            pb.CreateSegmentRequest(segment=pb.Segment(name=unique("bad-split"), condition=condition))
        )
    details = status_details(caught.value)
    assert (details.code, details.fields) == (grpc.StatusCode.INVALID_ARGUMENT, fields)
