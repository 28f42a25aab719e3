"""Profile decides whether a person may be contacted, per channel and purpose, and announces it
(profile.contact_verdict_changed) whenever it may change: consent answers, merges, unmerges, and the
republish after the upgrade that introduced verdicts."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import nats
import pytest
import sqlalchemy as sa
from nats.aio.msg import Msg

from omni.common.v1 import common_pb2
from omni.events.v1 import envelope_pb2
from omni.identity.v1 import identity_pb2
from omni.profile.v1 import events_pb2, profile_pb2
from omni_kit.bus import envelopes_in, unpack
from omni_kit.db import create_engine, migrate
from omni_kit.embedded import EmbeddedNats, EmbeddedPostgres
from omni_profile import main as profile_main

from .support import COMMON, EventLog, Services, close_runtime, event, ident, track, unique

EMAIL, SMS, PUSH = common_pb2.CHANNEL_EMAIL, common_pb2.CHANNEL_SMS, common_pb2.CHANNEL_PUSH
GRANTED, DENIED, REVOKED = (
    profile_pb2.CONSENT_STATE_GRANTED,
    profile_pb2.CONSENT_STATE_DENIED,
    profile_pb2.CONSENT_STATE_REVOKED,
)
MARKETING, TRANSACTIONAL = profile_pb2.CONSENT_PURPOSE_MARKETING, profile_pb2.CONSENT_PURPOSE_TRANSACTIONAL
PENDING = profile_pb2.DOUBLE_OPT_IN_STATE_PENDING_CONFIRMATION
CONFIRMED = profile_pb2.DOUBLE_OPT_IN_STATE_CONFIRMED
R = events_pb2  # the reasons: R.CONTACT_VERDICT_REASON_…

Verdicts = set[tuple[int, int, bool, int]]


def _verdicts(event: events_pb2.ContactVerdictChangedEvent) -> Verdicts:
    return {(v.channel, v.purpose, v.allowed, v.reason) for v in event.verdicts}


def _of(person: str) -> Callable[[envelope_pb2.Envelope], bool]:
    return lambda e: e.type == "profile.contact_verdict_changed" and e.person_id == person


async def _announced(
    services: Services, person: str, count: int
) -> list[events_pb2.ContactVerdictChangedEvent]:
    """The person's first `count` verdict announcements, waiting for them."""
    found = await services.events.wait_for(_of(person), count=count)
    return [unpack(e, events_pb2.ContactVerdictChangedEvent) for e in found]


async def _set(services: Services, person: str, **fields: object) -> None:
    await services.profile.SetConsent(
        profile_pb2.SetConsentRequest(
            person_id=person,
            consent=profile_pb2.Consent(source="test", **fields),  # type: ignore[arg-type]
        )
    )


async def test_each_consent_answer_announces_the_persons_verdicts_under_a_growing_version(
    services: Services,
) -> None:
    person = (await track(services, event())).person_id
    await _set(services, person, channel=EMAIL, state=GRANTED, double_opt_in=PENDING)
    await _set(services, person, channel=EMAIL, state=GRANTED, double_opt_in=CONFIRMED)
    await _set(services, person, channel=EMAIL, state=DENIED, purpose=TRANSACTIONAL)
    await _set(services, person, channel=SMS, state=REVOKED)
    await _set(services, person, channel=PUSH, state=GRANTED, purpose=profile_pb2.CONSENT_PURPOSE_ANALYTICS)

    announced = await _announced(services, person, 5)

    assert [_verdicts(a) for a in announced] == [
        {(EMAIL, MARKETING, False, R.CONTACT_VERDICT_REASON_AWAITING_CONFIRMATION)},
        {(EMAIL, MARKETING, True, R.CONTACT_VERDICT_REASON_CONSENT_GRANTED)},
        {
            (EMAIL, MARKETING, True, R.CONTACT_VERDICT_REASON_CONSENT_GRANTED),
            (EMAIL, TRANSACTIONAL, False, R.CONTACT_VERDICT_REASON_DENIED),
        },
        {
            (EMAIL, MARKETING, True, R.CONTACT_VERDICT_REASON_CONSENT_GRANTED),
            (EMAIL, TRANSACTIONAL, False, R.CONTACT_VERDICT_REASON_DENIED),
            (SMS, MARKETING, False, R.CONTACT_VERDICT_REASON_REVOKED),
        },
        # Analytics consent is no purpose of a message: the verdicts stay as they were.
        {
            (EMAIL, MARKETING, True, R.CONTACT_VERDICT_REASON_CONSENT_GRANTED),
            (EMAIL, TRANSACTIONAL, False, R.CONTACT_VERDICT_REASON_DENIED),
            (SMS, MARKETING, False, R.CONTACT_VERDICT_REASON_REVOKED),
        },
    ]
    versions = [a.version for a in announced]
    assert versions == sorted(versions) and len(set(versions)) == 5 and versions[0] > 0
    assert all(a.person_id == person and a.HasField("decide_time") for a in announced)


async def test_a_merge_announces_the_survivors_verdicts_with_the_latest_answers_and_an_unmerge_clears_the_restored(
    services: Services,
) -> None:
    survivor = (
        await track(services, event(identifiers=[ident("email", unique("s.") + "@example.com")]))
    ).person_id
    merged = (
        await track(services, event(identifiers=[ident("email", unique("m.") + "@example.com")]))
    ).person_id
    await _set(services, survivor, channel=EMAIL, state=REVOKED)
    await _set(services, merged, channel=EMAIL, state=GRANTED)  # later: wins
    await _set(services, merged, channel=SMS, state=DENIED, purpose=TRANSACTIONAL)
    merged_before = await _announced(services, merged, 2)

    await services.identity.MergePersons(
        identity_pb2.MergePersonsRequest(
            request_id=unique("merge-"), survivor_person_id=survivor, merged_person_id=merged, reason="test"
        )
    )
    after_merge = (await _announced(services, survivor, 2))[-1]
    assert _verdicts(after_merge) == {
        (EMAIL, MARKETING, True, R.CONTACT_VERDICT_REASON_CONSENT_GRANTED),
        (SMS, TRANSACTIONAL, False, R.CONTACT_VERDICT_REASON_DENIED),
    }

    await services.identity.UnmergePerson(
        identity_pb2.UnmergePersonRequest(request_id=unique("unmerge-"), person_id=merged, reason="test")
    )
    restored = (await _announced(services, merged, 3))[-1]
    # The answers stay with the survivor; the restored person is back with the verdicts of no answer, announced
    # under a version newer than those of its answers before the merge, so no copy keeps those.
    assert _verdicts(restored) == set()
    assert restored.version > max(a.version for a in merged_before)
    assert restored.version > after_merge.version


@pytest.fixture
async def namespace_log(nats_server: EmbeddedNats) -> AsyncIterator[tuple[str, EventLog]]:
    """A fresh event namespace and the events published on it."""
    namespace = "t" + uuid.uuid4().hex[:10]
    client = await nats.connect(nats_server.url)
    log = EventLog()

    async def received(message: Msg) -> None:
        log.envelopes.extend(envelopes_in(message.data, message.headers))
        log.arrived.set()

    await client.subscribe(f"{namespace}.events.>", cb=received)
    await client.flush()
    try:
        yield namespace, log
    finally:
        await client.drain()


async def test_after_the_upgrade_profile_republishes_the_verdicts_of_everyone_who_answered_before(
    postgres: EmbeddedPostgres,
    nats_server: EmbeddedNats,
    make_database: Callable[..., str],
    namespace_log: tuple[str, EventLog],
) -> None:
    namespace, log = namespace_log
    url = make_database("profile_verdicts_upgrade")
    engine = create_engine(url, application_name="omni-test-profile")
    granted, refused, silent = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    try:
        await migrate(engine, profile_main.MIGRATIONS, "0006")
        async with engine.begin() as connection:
            await connection.execute(
                sa.text("INSERT INTO profiles (person_id) SELECT unnest(CAST(:ids AS uuid[]))"),
                {"ids": [granted, refused, silent]},
            )
            await connection.execute(
                sa.text(
                    "INSERT INTO consents (person_id, channel, purpose, state, source, double_opt_in, updated_at) "
                    "VALUES (:g, 'email', 'marketing', 'granted', 'signup', 'confirmed', :at), "
                    "(:r, 'sms', 'marketing', 'granted', 'signup', NULL, :at), "
                    "(:r, 'email', 'transactional', 'revoked', 'support', NULL, :at)"
                ),
                {"g": granted, "r": refused, "at": datetime(2026, 5, 1, tzinfo=UTC)},
            )
    finally:
        await engine.dispose()

    runtime = await profile_main.start(
        profile_main.Settings.model_validate(
            {
                **COMMON,
                "database_url": url,
                "nats_url": nats_server.url,
                "event_namespace": namespace,
                "identity_target": "127.0.0.1:9",
            }
        )
    )
    try:
        found = await log.wait_for(lambda e: e.type == "profile.contact_verdict_changed", count=2)
        by_person = {e.person_id: unpack(e, events_pb2.ContactVerdictChangedEvent) for e in found}
        assert set(by_person) == {str(granted), str(refused)}  # no answer, nothing to announce
        assert _verdicts(by_person[str(granted)]) == {
            (EMAIL, MARKETING, True, R.CONTACT_VERDICT_REASON_CONSENT_GRANTED)
        }
        assert _verdicts(by_person[str(refused)]) == {
            (SMS, MARKETING, True, R.CONTACT_VERDICT_REASON_CONSENT_GRANTED),
            (EMAIL, TRANSACTIONAL, False, R.CONTACT_VERDICT_REASON_REVOKED),
        }
        engine = create_engine(url, application_name="omni-test-profile")
        try:
            async with engine.connect() as connection:
                republishes = sa.text(
                    "SELECT count(*) FROM scheduled_jobs WHERE kind = 'profile.contact_verdict_republish'"
                )
                assert await connection.scalar(republishes) == 0
        finally:
            await engine.dispose()
    finally:
        await close_runtime(runtime)
