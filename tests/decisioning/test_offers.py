"""Offers as resources over gRPC: read, list, update with a mask (each change a version, kept), archive; and
Decide follows every change at once (archived, out of its window, moved to another touchpoint)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp

from omni.decisioning.v1 import decisioning_pb2 as d

from .support import Decisioning
from .test_bad_input import failure
from .test_decide import create_offer, decide, touchpoint


def stamp(value: datetime) -> Timestamp:
    timestamp = Timestamp()
    timestamp.FromDatetime(value)
    return timestamp


def offer_ids(response: d.DecideResponse) -> list[str]:
    return [action.offer_id for action in response.actions]


async def update(
    decisioning: Decisioning, offer: d.Offer, *paths: str, expected_version: int = 0, request_id: str = ""
) -> d.Offer:
    response = await decisioning.stub.UpdateOffer(
        d.UpdateOfferRequest(
            offer=offer,
            update_mask=FieldMask(paths=list(paths)),
            expected_version=expected_version,
            request_id=request_id,
        )
    )
    return response.offer


async def test_an_offer_is_created_at_version_1_and_read_back(decisioning: Decisioning) -> None:
    created = await create_offer(decisioning, "read", priority=4, touchpoints=["web_home"])
    assert created.version == 1
    assert created.update_time == created.create_time
    assert not created.HasField("archive_time")
    got = (await decisioning.stub.GetOffer(d.GetOfferRequest(offer_id=created.id))).offer
    assert got == created


async def test_an_update_changes_only_the_masked_fields_and_makes_a_version(decisioning: Decisioning) -> None:
    at = touchpoint()
    person = uuid.uuid4()
    first = await create_offer(decisioning, "first", priority=5, touchpoints=[at])
    second = await create_offer(decisioning, "second", priority=1, touchpoints=[at])
    assert offer_ids(await decide(decisioning, person, at)) == [first.id, second.id]

    # Only priority and group are named: the empty name and description sent are not changes.
    changed = await update(
        decisioning, d.Offer(id=second.id, priority=9, group="loyalty"), "priority", "group"
    )
    assert (changed.version, changed.priority, changed.group) == (2, 9, "loyalty")
    assert changed.name == second.name and changed.description == second.description
    assert changed.update_time.ToDatetime() > second.update_time.ToDatetime()
    # Decide follows at once.
    assert offer_ids(await decide(decisioning, person, at)) == [second.id, first.id]

    # The first version is still readable as it was.
    before = (await decisioning.stub.GetOffer(d.GetOfferRequest(offer_id=second.id, version=1))).offer
    assert (before.version, before.priority, before.group) == (1, 1, "")
    assert before.name == second.name
    missing = await failure(decisioning.stub.GetOffer(d.GetOfferRequest(offer_id=second.id, version=7)))
    assert missing.code == grpc.StatusCode.NOT_FOUND
    assert missing.error_info is not None and missing.error_info.reason == "OFFER_VERSION_NOT_FOUND"

    # The same values again change nothing: no new version.
    same = await update(decisioning, d.Offer(id=second.id, priority=9), "priority")
    assert same.version == 2


async def test_moving_an_offer_to_another_touchpoint_moves_it_in_decide(decisioning: Decisioning) -> None:
    here, there = touchpoint(), touchpoint()
    person = uuid.uuid4()
    offer = await create_offer(decisioning, "mover", touchpoints=[here])
    assert offer_ids(await decide(decisioning, person, here)) == [offer.id]
    await update(decisioning, d.Offer(id=offer.id, touchpoints=[there]), "touchpoints")
    assert offer_ids(await decide(decisioning, person, here)) == []
    assert offer_ids(await decide(decisioning, person, there)) == [offer.id]


async def test_an_offer_outside_its_validity_window_is_not_decided(decisioning: Decisioning) -> None:
    at = touchpoint()
    person = uuid.uuid4()
    now = datetime.now(UTC)
    offer = await create_offer(decisioning, "window", touchpoints=[at])
    later = await update(
        decisioning,
        d.Offer(
            id=offer.id,
            valid_from=stamp(now + timedelta(hours=1)),
            valid_until=stamp(now + timedelta(hours=2)),
        ),
        "valid_from",
        "valid_until",
    )
    assert later.valid_from.ToDatetime(tzinfo=UTC) == now + timedelta(hours=1)
    assert offer_ids(await decide(decisioning, person, at)) == []
    await update(decisioning, d.Offer(id=offer.id, valid_from=stamp(now - timedelta(hours=1))), "valid_from")
    assert offer_ids(await decide(decisioning, person, at)) == [offer.id]
    await update(
        decisioning, d.Offer(id=offer.id, valid_until=stamp(now - timedelta(minutes=1))), "valid_until"
    )
    # From an hour ago to a minute ago: over.
    assert offer_ids(await decide(decisioning, person, at)) == []

    empty = await failure(
        decisioning.stub.UpdateOffer(
            d.UpdateOfferRequest(
                offer=d.Offer(id=offer.id, valid_until=stamp(now - timedelta(hours=2))),
                update_mask=FieldMask(paths=["valid_until"]),
            )
        )
    )
    assert empty.code == grpc.StatusCode.FAILED_PRECONDITION
    assert empty.error_info is not None and empty.error_info.reason == "OFFER_VALIDITY_EMPTY"


async def test_an_archived_offer_leaves_decide_and_cannot_change(decisioning: Decisioning) -> None:
    at = touchpoint()
    person = uuid.uuid4()
    offer = await create_offer(decisioning, "archived", touchpoints=[at])
    assert offer_ids(await decide(decisioning, person, at)) == [offer.id]
    archived = (await decisioning.stub.ArchiveOffer(d.ArchiveOfferRequest(offer_id=offer.id))).offer
    assert archived.version == 2 and archived.HasField("archive_time")
    assert offer_ids(await decide(decisioning, person, at)) == []
    again = (await decisioning.stub.ArchiveOffer(d.ArchiveOfferRequest(offer_id=offer.id))).offer
    assert again == archived
    refused = await failure(
        decisioning.stub.UpdateOffer(
            d.UpdateOfferRequest(
                offer=d.Offer(id=offer.id, priority=3), update_mask=FieldMask(paths=["priority"])
            )
        )
    )
    assert refused.code == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.error_info is not None and refused.error_info.reason == "OFFER_ARCHIVED"
    # Listed only when asked for.
    listed = await all_offers(decisioning, show_archived=False)
    assert offer.id not in listed
    assert (await all_offers(decisioning, show_archived=True))[offer.id].HasField("archive_time")


async def all_offers(decisioning: Decisioning, *, show_archived: bool) -> dict[str, d.Offer]:
    found: dict[str, d.Offer] = {}
    token = ""
    while True:
        page = await decisioning.stub.ListOffers(
            d.ListOffersRequest(page_size=7, page_token=token, show_archived=show_archived)
        )
        assert len(page.offers) <= 7
        for offer in page.offers:
            assert offer.id not in found
            found[offer.id] = offer
        token = page.next_page_token
        if not token:
            return found


async def test_a_stale_expected_version_is_aborted(decisioning: Decisioning) -> None:
    offer = await create_offer(decisioning, "race", touchpoints=["web_home"])
    await update(decisioning, d.Offer(id=offer.id, priority=2), "priority", expected_version=1)
    stale = await failure(
        decisioning.stub.UpdateOffer(
            d.UpdateOfferRequest(
                offer=d.Offer(id=offer.id, priority=3),
                update_mask=FieldMask(paths=["priority"]),
                expected_version=1,
            )
        )
    )
    assert stale.code == grpc.StatusCode.ABORTED
    assert stale.error_info is not None and stale.error_info.reason == "OFFER_VERSION_CHANGED"
    assert stale.error_info.metadata["version"] == "2"


async def test_an_update_is_done_once_per_request_id(decisioning: Decisioning) -> None:
    offer = await create_offer(decisioning, "once", touchpoints=["web_home"])
    key = f"update-{uuid.uuid4()}"
    first = await update(
        decisioning, d.Offer(id=offer.id, priority=offer.priority + 1), "priority", request_id=key
    )
    replay = await update(
        decisioning, d.Offer(id=offer.id, priority=offer.priority + 1), "priority", request_id=key
    )
    assert replay == first and first.version == 2
    reused = await failure(
        decisioning.stub.UpdateOffer(
            d.UpdateOfferRequest(
                offer=d.Offer(id=offer.id, priority=99),
                update_mask=FieldMask(paths=["priority"]),
                request_id=key,
            )
        )
    )
    assert reused.code == grpc.StatusCode.ALREADY_EXISTS


async def test_bad_updates_name_their_fields(decisioning: Decisioning) -> None:
    offer = await create_offer(decisioning, "bad", touchpoints=["web_home"])
    other = await create_offer(decisioning, "other", touchpoints=["web_home"])
    bad = await failure(
        decisioning.stub.UpdateOffer(
            d.UpdateOfferRequest(
                offer=d.Offer(id=offer.id, name="", touchpoints=["a", "a"], group="x" * 101),
                update_mask=FieldMask(paths=["name", "touchpoints", "group", "create_time", "version"]),
            )
        )
    )
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT
    assert bad.fields == {
        "offer.name",
        "offer.touchpoints[1]",
        "offer.group",
        "update_mask.paths[3]",
        "update_mask.paths[4]",
    }
    no_id = await failure(
        decisioning.stub.UpdateOffer(
            d.UpdateOfferRequest(offer=d.Offer(priority=1), update_mask=FieldMask(paths=["priority"]))
        )
    )
    assert no_id.fields == {"offer.id"}
    unknown = await failure(
        decisioning.stub.UpdateOffer(
            d.UpdateOfferRequest(
                offer=d.Offer(id=str(uuid.uuid4()), priority=1), update_mask=FieldMask(paths=["priority"])
            )
        )
    )
    assert unknown.code == grpc.StatusCode.NOT_FOUND
    taken = await failure(
        decisioning.stub.UpdateOffer(
            d.UpdateOfferRequest(
                offer=d.Offer(id=offer.id, name=other.name), update_mask=FieldMask(paths=["name"])
            )
        )
    )
    assert taken.code == grpc.StatusCode.ALREADY_EXISTS
    missing_segment = await failure(
        decisioning.stub.UpdateOffer(
            d.UpdateOfferRequest(
                offer=d.Offer(id=offer.id, segment_id=str(uuid.uuid4())),
                update_mask=FieldMask(paths=["segment_id"]),
            )
        )
    )
    assert missing_segment.code == grpc.StatusCode.NOT_FOUND
    window = await failure(
        decisioning.stub.CreateOffer(
            d.CreateOfferRequest(
                offer=d.Offer(
                    name=f"window-{uuid.uuid4().hex[:8]}",
                    valid_from=stamp(datetime(2027, 1, 2, tzinfo=UTC)),
                    valid_until=stamp(datetime(2027, 1, 1, tzinfo=UTC)),
                )
            )
        )
    )
    assert window.fields == {"offer.valid_until"}
    token = await failure(decisioning.stub.ListOffers(d.ListOffersRequest(page_token="nope")))
    assert token.fields == {"page_token"}
    # Nothing changed the offer.
    assert (await decisioning.stub.GetOffer(d.GetOfferRequest(offer_id=offer.id))).offer.version == 1
