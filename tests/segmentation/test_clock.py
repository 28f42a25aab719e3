"""The clock: how long event occurrences are kept, the purge of older ones, and due persons evaluated in batches."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from omni.segmentation.v1 import segmentation_pb2 as pb
from omni_segmentation.catalog import SegmentCatalog
from omni_segmentation.clock import MAX_RETENTION, Clock
from omni_segmentation.membership import MembershipEvaluator
from omni_segmentation.repository import Repository
from omni_segmentation.rules import Requirements

from .builders import event_count, trait
from .support import Segmentation, eventually, person, unique

HOUR = timedelta(hours=1)
# A person's check falling due: the time kept with the person, and the clock's job due then.
DUE_CHECK = (
    "INSERT INTO scheduled_jobs (kind, key, due_at) VALUES ('segmentation.person_check', :p, "
    "now() - interval '1 second') ON CONFLICT (kind, key) DO UPDATE SET due_at = excluded.due_at, claim = NULL"
)


def clock_for(segmentation: Segmentation, floor: timedelta) -> Clock:
    """A second clock on the service's database (the service's own keeps running)."""
    repository = Repository()
    catalog = SegmentCatalog(repository)
    evaluator = MembershipEvaluator(repository, catalog, segmentation.runtime.outbox)
    return Clock(segmentation.runtime.transaction, repository, catalog, evaluator, retention_floor=floor)


def test_retention_is_the_longest_window_within_the_floor_and_400_days() -> None:
    clock = Clock(None, None, None, None, retention_floor=timedelta(days=1))  # type: ignore[arg-type]
    assert clock.retention(Requirements(counted={}, since=frozenset())) == MAX_RETENTION
    assert clock.retention(Requirements(counted={"a": HOUR}, since=frozenset())) == timedelta(days=1)
    assert clock.retention(Requirements(counted={"a": HOUR, "b": timedelta(days=30)}, since=frozenset())) == (
        timedelta(days=30)
    )


async def test_purge_drops_occurrences_older_than_any_window_but_keeps_last_seen(
    segmentation: Segmentation,
) -> None:
    await segmentation.create(unique("two-hours"), event_count("purge_probe", 7200, pb.COMPARISON_GT, 0))
    someone = person()
    await segmentation.consumed(
        await segmentation.track(someone, "purge_probe", occurred_at=datetime.now(UTC) - 3 * HOUR),
        await segmentation.track(someone, "purge_probe", occurred_at=datetime.now(UTC) - HOUR),
    )
    purged = await clock_for(segmentation, floor=timedelta(0)).purge(datetime.now(UTC))
    assert purged >= 1
    left = await segmentation.rows(
        "SELECT occurred_at FROM event_occurrences WHERE person_id = :p", p=uuid.UUID(someone)
    )
    assert len(left) == 1 and left[0].occurred_at > datetime.now(UTC) - 2 * HOUR
    assert (
        await segmentation.scalar(
            "SELECT count(*) FROM person_last_events WHERE person_id = :p AND event_type = 'purge_probe'",
            p=uuid.UUID(someone),
        )
        == 1
    )


async def test_a_due_person_is_evaluated_once_and_not_again(segmentation: Segmentation) -> None:
    someone = person()
    await segmentation.consumed(await segmentation.track(someone, "page_viewed"))
    await segmentation.execute(
        "UPDATE persons SET next_check_at = now() - interval '1 second' WHERE person_id = :p",
        p=uuid.UUID(someone),
    )
    await segmentation.execute(DUE_CHECK, p=someone)
    assert await segmentation.scalar(
        "SELECT next_check_at IS NOT NULL FROM persons WHERE person_id = :p", p=uuid.UUID(someone)
    )
    clock = clock_for(segmentation, floor=timedelta(days=1))

    async def checked() -> bool:
        return bool(
            await segmentation.scalar(
                "SELECT next_check_at IS NULL FROM persons WHERE person_id = :p", p=uuid.UUID(someone)
            )
        )

    await clock.cycle()
    # The service's own clock may have claimed the person first (rows are claimed with SKIP LOCKED):
    # then this cycle skipped it and that one's commit is what clears it.
    await eventually(checked)
    await clock.cycle()
    assert await checked(), "an evaluated person is not due again"


async def test_a_person_whose_evaluation_fails_does_not_hold_up_the_batch(segmentation: Segmentation) -> None:
    gold = await segmentation.create(unique("gold"), trait("plan", pb.COMPARISON_EQ, "gold"))
    await eventually(lambda: segmentation.scalar("SELECT count(*) = 0 FROM backfills"))
    good, broken = uuid.UUID(person()), uuid.UUID(person())
    # Both due now; the broken one's traits are a JSON string where an object belongs (a damaged row), so
    # evaluating it raises, and with it the batch both are in.
    await segmentation.execute(
        "INSERT INTO persons (person_id, traits, next_check_at) VALUES "
        "(:good, '{\"plan\": \"gold\"}', now() - interval '1 second'), "
        "(:broken, '\"a plan\"', now() - interval '1 second')",
        good=good,
        broken=broken,
    )
    for someone in (good, broken):
        await segmentation.execute(DUE_CHECK, p=str(someone))
    await clock_for(segmentation, floor=timedelta(days=1)).cycle()
    # Evaluated on its own after the batch failed (here or by the service's own clock).
    assert await eventually(lambda: segmentation.segments_of(str(good))) == {gold.name}
    retry_at = await eventually(
        lambda: segmentation.scalar(
            "SELECT next_check_at FROM persons WHERE person_id = :p AND next_check_at > now()", p=broken
        )
    )
    assert retry_at > datetime.now(UTC) + timedelta(seconds=20)


async def test_a_next_check_is_a_job_of_the_scheduler_due_then(segmentation: Segmentation) -> None:
    await segmentation.create(unique("recent-visit"), event_count("job_probe", 3600, pb.COMPARISON_GTE, 1))
    someone = person()
    await segmentation.consumed(await segmentation.track(someone, "job_probe"))
    next_check = await segmentation.scalar(
        "SELECT next_check_at FROM persons WHERE person_id = :p", p=uuid.UUID(someone)
    )
    assert next_check is not None
    due = await segmentation.scalar(
        "SELECT due_at FROM scheduled_jobs WHERE kind = 'segmentation.person_check' AND key = :p", p=someone
    )
    assert due == next_check
    # The persons table is no longer polled: its index for that is gone, one job table serves every clock.
    assert not await segmentation.scalar("SELECT to_regclass('persons_next_check') IS NOT NULL")
