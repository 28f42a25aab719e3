"""Rules on computed traits (profile computes them and announces them in profile.profile_changed, under
"computed_traits"): a trait condition sees them, live and on a new segment's backfill."""

from __future__ import annotations

from omni.segmentation.v1 import segmentation_pb2 as pb

from .builders import all_of, trait
from .support import EventLog, Segmentation, eventually, person, unique

ENTERED = "segmentation.person_entered_segment"
EXITED = "segmentation.person_exited_segment"


async def test_a_computed_trait_selects_live(segmentation: Segmentation, events: EventLog) -> None:
    loyal = await segmentation.create(unique("loyal"), trait("orders_in_store", pb.COMPARISON_GTE, 9))
    regular, occasional = person(), person()
    await segmentation.profile_changed(
        regular, computed_traits={"orders_in_store": 9, "orders_30d": 2}, changed=("computed_traits",)
    )
    await segmentation.profile_changed(
        occasional, computed_traits={"orders_in_store": 3}, changed=("computed_traits",)
    )
    await events.wait_for(ENTERED, regular)
    assert loyal.name in await segmentation.segments_of(regular)
    assert loyal.name not in await segmentation.segments_of(occasional)

    # Profile announces all computed traits after a change: a lower count takes the person out.
    await segmentation.profile_changed(
        regular, computed_traits={"orders_in_store": 8}, changed=("computed_traits",)
    )
    await events.wait_for(EXITED, regular)
    assert loyal.name not in await segmentation.segments_of(regular)


async def test_a_computed_trait_selects_on_backfill(segmentation: Segmentation, events: EventLog) -> None:
    counted, short = person(), person()
    for someone, count in ((counted, 10), (short, 9)):
        change = await segmentation.profile_changed(
            someone, computed_traits={"signups_count": count}, changed=("computed_traits",)
        )
        await segmentation.consumed(change)
    custom = await segmentation.create(unique("custom"), trait("signups_count", pb.COMPARISON_GTE, 10))
    await events.wait_for(ENTERED, counted)
    assert custom.name in await segmentation.segments_of(counted)
    assert custom.name not in await segmentation.segments_of(short)


async def test_traits_and_computed_traits_keep_each_other(
    segmentation: Segmentation, events: EventLog
) -> None:
    """A change of traits leaves the computed traits as they were, and the reverse; a trait set on the
    profile wins over a computed trait of the same name."""
    both = await segmentation.create(
        unique("both"),
        all_of(trait("plan", pb.COMPARISON_EQ, "gold"), trait("lifetime_value", pb.COMPARISON_GT, 10_000)),
    )
    someone = person()
    await segmentation.profile_changed(someone, traits={"plan": "gold"}, changed=("traits",))
    await segmentation.profile_changed(
        someone, computed_traits={"lifetime_value": 25_000}, changed=("computed_traits",)
    )
    await events.wait_for(ENTERED, someone)
    await segmentation.profile_changed(
        someone, traits={"plan": "gold", "lifetime_value": 5}, changed=("traits",)
    )
    await events.wait_for(EXITED, someone)
    assert both.name not in await segmentation.segments_of(someone)
    await eventually(
        lambda: segmentation.scalar(
            "SELECT computed_traits->>'lifetime_value' FROM persons WHERE person_id = CAST(:p AS uuid)",
            p=someone,
        )
    )
