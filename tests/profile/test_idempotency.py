"""SetTraits, SetConsent and CreateComputedTrait by request id (omni_kit.idempotency): a retry answers the
first answer and changes nothing, the same id with other content is refused with nothing written, answers
are purged after the retention, and erasing a person removes the answers that show them."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from typing import Any

import grpc
import pytest

from omni.common.v1 import common_pb2
from omni.identity.v1 import identity_pb2
from omni.profile.v1 import profile_pb2
from omni_kit.errors import status_details
from omni_kit.ids import new_id_str

from ..idempotency import assert_key_reused, purge_aged, stored_answers, until
from .support import Services, event, get_profile, struct, track, unique

EMAIL = common_pb2.CHANNEL_EMAIL
GRANTED, REVOKED = profile_pb2.CONSENT_STATE_GRANTED, profile_pb2.CONSENT_STATE_REVOKED


def set_traits(person: str, request_id: str = "", **traits: Any) -> profile_pb2.SetTraitsRequest:
    return profile_pb2.SetTraitsRequest(
        person_id=person, traits=struct(traits), source="crm", request_id=request_id
    )


def set_consent(person: str, state: int, request_id: str = "") -> profile_pb2.SetConsentRequest:
    return profile_pb2.SetConsentRequest(
        person_id=person,
        consent=profile_pb2.Consent(channel=EMAIL, state=state, source="signup"),  # type: ignore[arg-type]
        request_id=request_id,
    )


def computed_trait(name: str, request_id: str = "", event_type: str = "order_completed") -> Any:
    return profile_pb2.CreateComputedTraitRequest(
        computed_trait=profile_pb2.ComputedTrait(
            name=name, kind=profile_pb2.COMPUTED_TRAIT_KIND_COUNT, event_type=event_type
        ),
        request_id=request_id,
    )


async def changes(services: Services, table: str, person: str) -> int:
    return int(
        await services.scalar(f"SELECT count(*) FROM {table} WHERE person_id = :p", p=uuid.UUID(person))
    )


async def announced(services: Services, event_type: str, person: str, last: Awaitable[object]) -> int:
    """How many events of a type profile published about the person, once the last call's is out (anything
    a call before it staged was published before it)."""
    await last
    before_last = len(services.events.matching(lambda e: e.type == event_type and e.person_id == person))
    await services.events.wait_for(
        lambda e: e.type == event_type and e.person_id == person, count=before_last + 1
    )
    return len(services.events.matching(lambda e: e.type == event_type and e.person_id == person))


async def test_a_retried_set_traits_answers_the_first_answer_and_changes_nothing(services: Services) -> None:
    person = (await track(services, event())).person_id
    request = set_traits(person, new_id_str(), plan="gold")
    first = await services.profile.SetTraits(request)
    # Changed meanwhile by another call: a late retry must not set the old value again.
    await services.profile.SetTraits(set_traits(person, plan="silver"))

    again = await services.profile.SetTraits(request)

    assert again == first
    assert first.profile.traits["plan"] == "gold"
    assert (await get_profile(services, person)).traits["plan"] == "silver"
    assert await changes(services, "trait_changes", person) == 2
    [answer] = await stored_answers(services.profile_runtime, request.request_id)
    assert answer.scope == "SetTraits" and uuid.UUID(person) in answer.person_ids


async def test_a_retried_set_consent_answers_the_first_answer_and_records_one_change(
    services: Services,
) -> None:
    person = (await track(services, event())).person_id
    request = set_consent(person, GRANTED, new_id_str())
    first = await services.profile.SetConsent(request)
    again = await services.profile.SetConsent(request)

    assert again == first
    assert await changes(services, "consent_history", person) == 1
    last = services.profile.SetConsent(set_consent(person, REVOKED))
    assert await announced(services, "profile.consent_changed", person, last) == 2
    [answer] = await stored_answers(services.profile_runtime, request.request_id)
    assert answer.person_ids == [uuid.UUID(person)]


async def test_a_retried_create_computed_trait_answers_the_first_answer(services: Services) -> None:
    request = computed_trait(unique("orders_"), new_id_str())
    first = await services.profile.CreateComputedTrait(request)
    again = await services.profile.CreateComputedTrait(request)

    assert again == first
    assert (
        await services.scalar(
            "SELECT count(*) FROM computed_traits WHERE name = :n", n=request.computed_trait.name
        )
        == 1
    )


async def test_the_same_id_with_other_content_is_refused_and_nothing_is_written(services: Services) -> None:
    person = (await track(services, event())).person_id
    traits_id, consent_id, trait_id = new_id_str(), new_id_str(), new_id_str()
    await services.profile.SetTraits(set_traits(person, traits_id, plan="gold"))
    await services.profile.SetConsent(set_consent(person, GRANTED, consent_id))
    await services.profile.CreateComputedTrait(computed_trait(unique("orders_"), trait_id))
    before = await services.counts()

    refusals = [
        (services.profile.SetTraits, set_traits(person, traits_id, plan="silver"), traits_id),
        (services.profile.SetConsent, set_consent(person, REVOKED, consent_id), consent_id),
        (services.profile.CreateComputedTrait, computed_trait(unique("visits_"), trait_id), trait_id),
    ]
    for call, request, request_id in refusals:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(request)  # type: ignore[operator]
        assert_key_reused(refused.value, request_id)

    after = await services.counts()
    assert {t: n for t, n in after.items() if t != "outbox"} == {
        t: n for t, n in before.items() if t != "outbox"
    }
    assert (await get_profile(services, person)).traits["plan"] == "gold"


async def test_without_a_request_id_each_call_changes_again(services: Services) -> None:
    person = (await track(services, event())).person_id
    for state in (GRANTED, REVOKED, GRANTED):
        await services.profile.SetConsent(set_consent(person, state))
    assert await changes(services, "consent_history", person) == 3
    name = unique("orders_")
    await services.profile.CreateComputedTrait(computed_trait(name))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await services.profile.CreateComputedTrait(computed_trait(name))
    details = status_details(refused.value)
    assert details.error_info is not None and details.error_info.reason == "COMPUTED_TRAIT_EXISTS"
    assert await stored_answers(services.profile_runtime, "") == []


@pytest.mark.parametrize("request_id", ["x" * 129, "key\x00", "ke\ny"])
async def test_a_malformed_request_id_is_refused(services: Services, request_id: str) -> None:
    person = (await track(services, event())).person_id
    before = await services.counts()
    for call, request in (
        (services.profile.SetTraits, set_traits(person, request_id, plan="gold")),
        (services.profile.SetConsent, set_consent(person, GRANTED, request_id)),
        (services.profile.CreateComputedTrait, computed_trait(unique("orders_"), request_id)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(request)  # type: ignore[operator]
        details = status_details(refused.value)
        assert details.code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.fields == {"request_id"}
    assert await services.counts() == before


async def test_an_answer_past_the_retention_is_purged_and_its_id_free_again(services: Services) -> None:
    person = (await track(services, event())).person_id
    request_id = new_id_str()
    await services.profile.SetTraits(set_traits(person, request_id, plan="gold"))

    await purge_aged(services.profile_runtime, request_id)

    answer = await services.profile.SetTraits(set_traits(person, request_id, plan="platinum"))
    assert answer.profile.traits["plan"] == "platinum"


async def test_erasing_a_person_removes_the_answers_that_show_them(services: Services) -> None:
    person, other = (await track(services, event())).person_id, (await track(services, event())).person_id
    mine = [new_id_str(), new_id_str()]
    await services.profile.SetTraits(set_traits(person, mine[0], email=f"{unique()}@example.com"))
    await services.profile.SetConsent(set_consent(person, GRANTED, mine[1]))
    kept = new_id_str()
    await services.profile.SetTraits(set_traits(other, kept, plan="gold"))

    await services.identity.ForgetPerson(
        identity_pb2.ForgetPersonRequest(
            request_id=unique("forget-"), person_id=person, requested_by="dpo", reason="GDPR art. 17"
        )
    )
    await services.events.wait_for(lambda e: e.type == "profile.person_erased" and e.person_id == person)

    for request_id in mine:
        assert await stored_answers(services.profile_runtime, request_id) == []
    assert len(await stored_answers(services.profile_runtime, kept)) == 1
    # A retry now is a new call, for a person profile no longer knows.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await services.profile.SetTraits(set_traits(person, mine[0], email="again@example.com"))
    assert refused.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION)


async def test_an_answer_shows_the_persons_merged_into_the_person(services: Services) -> None:
    survivor, merged = (await track(services, event())).person_id, (await track(services, event())).person_id
    await services.identity.MergePersons(
        identity_pb2.MergePersonsRequest(
            request_id=unique("merge-"), survivor_person_id=survivor, merged_person_id=merged, reason="same"
        )
    )
    await until(
        lambda: services.scalar(
            "SELECT merged_into = :s FROM profiles WHERE person_id = :m",
            s=uuid.UUID(survivor),
            m=uuid.UUID(merged),
        )
    )
    request_id = new_id_str()
    await services.profile.SetTraits(set_traits(merged, request_id, plan="gold"))

    [answer] = await stored_answers(services.profile_runtime, request_id)
    assert set(answer.person_ids) == {uuid.UUID(survivor), uuid.UUID(merged)}


async def test_the_audit_entry_of_a_consent_commits_with_the_change_and_a_retry_adds_its_own(
    services: Services,
) -> None:
    person = (await track(services, event())).person_id
    request = set_consent(person, GRANTED, new_id_str())
    await services.profile.SetConsent(request)
    await services.profile.SetConsent(request)

    change_tx = await services.scalar(
        "SELECT xmin::text FROM consent_history WHERE person_id = :p", p=uuid.UUID(person)
    )
    entries = await services.scalar(
        "SELECT array_agg(xmin::text ORDER BY occurred_at) FROM audit_events WHERE request_id = :r",
        r=request.request_id,
    )
    # Read straight from the table once answered: the first call's entry is the change's transaction's.
    assert len(entries) == 2 and entries[0] == change_tx and entries[1] != change_tx
