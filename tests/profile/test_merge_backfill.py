"""A merge while a new computed trait is being backfilled counts every event of both persons for it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from omni.common.v1 import common_pb2
from omni.events.v1 import envelope_pb2
from omni.profile.v1 import events_pb2, profile_pb2
from omni_kit.bus import unpack
from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres

from .conftest import running_services
from .support import Services, event, get_profile, ident, track, unique


@pytest.fixture(scope="module")
async def slow_backfill(postgres: EmbeddedPostgres, nats_server: EmbeddedNats) -> AsyncIterator[Services]:
    """Profile whose backfills start an hour after a definition: the test sees the merge before them."""
    async with running_services(postgres, nats_server, computed_traits_refresh_s=3600) as running:
        yield running


def _merged_into(survivor: str):  # type: ignore[no-untyped-def]
    def matches(envelope: envelope_pb2.Envelope) -> bool:
        if envelope.type != "profile.profile_changed":
            return False
        payload = unpack(envelope, events_pb2.ProfileChangedEvent)
        return payload.person_id == survivor and bool(payload.merged_person_ids)

    return matches


async def test_a_merge_during_a_backfill_counts_the_merged_persons_earlier_events(
    slow_backfill: Services,
) -> None:
    # Combining two states is exact only for traits complete on both sides. While a definition is being
    # backfilled, the person merged may be one the backfill has not reached while the survivor is one it
    # has passed; the backfill then skips the merged person, and its events from before the definition
    # would never count. The merge recomputes such traits from the survivor's timeline instead.
    services = slow_backfill
    cookie, device = unique("cookie-"), unique("device-")
    older = await track(services, event("page_viewed", identifiers=[ident("anonymous_id", cookie)]))
    newer = await track(services, event("page_viewed", identifiers=[ident("device_id", device)]))
    await track(services, event("page_viewed", person_id=newer.person_id))
    name = unique("views_")
    created = await services.profile.CreateComputedTrait(
        profile_pb2.CreateComputedTraitRequest(
            computed_trait=profile_pb2.ComputedTrait(
                name=name, kind=profile_pb2.COMPUTED_TRAIT_KIND_COUNT, event_type="page_viewed"
            )
        )
    )
    assert created.computed_trait.state == profile_pb2.COMPUTED_TRAIT_STATE_BACKFILLING

    login = event(
        "logged_in",
        identifiers=[ident("anonymous_id", cookie), ident("device_id", device)],
        channel=common_pb2.CHANNEL_APP,
    )
    assert (await track(services, login)).person_id == older.person_id
    await services.events.wait_for(_merged_into(older.person_id))

    # Three page views, all from before the definition: the backfill has not run, the merge counted them.
    assert (await get_profile(services, older.person_id)).computed_traits[name] == 3


async def test_a_new_definitions_backfill_is_a_job_due_once_every_replica_applies_it(
    slow_backfill: Services,
) -> None:
    name = unique("opens_")
    await slow_backfill.profile.CreateComputedTrait(
        profile_pb2.CreateComputedTraitRequest(
            computed_trait=profile_pb2.ComputedTrait(
                name=name, kind=profile_pb2.COMPUTED_TRAIT_KIND_COUNT, event_type="email_opened"
            )
        )
    )
    due_after_creation = await slow_backfill.scalar(
        "SELECT j.due_at - t.created_at FROM scheduled_jobs j JOIN computed_traits t ON t.name = j.key "
        "WHERE j.kind = 'profile.computed_trait_backfill' AND j.key = :name",
        name=name,
    )
    # One refresh interval (3600 s here) after the definition, give or take the two clocks' readings.
    assert abs(due_after_creation.total_seconds() - 3600) < 5
