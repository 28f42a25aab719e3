"""A campaign to a segment that filled before it: everyone in the segment, at a speed limit, through all five
services, counted where the emails arrive."""

from __future__ import annotations

import asyncio
import time
import uuid

from google.protobuf import struct_pb2

from omni.common.v1 import common_pb2 as c
from omni.decisioning.v1 import decisioning_pb2 as d
from omni.gateway.v1 import gateway_pb2
from omni.identity.v1 import identity_pb2
from omni.profile.v1 import profile_pb2 as p
from omni.segmentation.v1 import segmentation_pb2 as s
from omni_kit.embedded import SmtpSink
from tests.e2e.conftest import Omni
from tests.e2e.test_abandoned_cart import eventually

MEMBERS = 4
PER_MINUTE = 60  # one a second


async def test_a_campaign_reaches_a_segment_that_filled_before_it_at_its_speed_limit(
    omni: Omni, smtp_sink: SmtpSink
) -> None:
    plan = f"plan-{uuid.uuid4().hex[:6]}"
    segment = (
        await omni.segmentation.CreateSegment(
            s.CreateSegmentRequest(
                segment=s.Segment(
                    name=f"on-{plan}",
                    condition=s.Condition(
                        trait=s.TraitCondition(
                            trait="plan",
                            comparison=s.COMPARISON_EQ,
                            value=struct_pb2.Value(string_value=plan),
                        )
                    ),
                )
            )
        )
    ).segment
    emails = [f"member{i}.{uuid.uuid4().hex[:6]}@example.com" for i in range(MEMBERS)]
    persons = []
    for email in emails:
        person = (
            await omni.identity.ResolvePerson(
                identity_pb2.ResolvePersonRequest(
                    identifiers=[c.Identifier(type="email", value=email)], source="web"
                )
            )
        ).resolution.person_id
        persons.append(person)
        await omni.profile.SetConsent(
            p.SetConsentRequest(
                person_id=person,
                consent=p.Consent(channel=c.CHANNEL_EMAIL, state=p.CONSENT_STATE_GRANTED, source="web"),
            )
        )
        traits = struct_pb2.Struct()
        traits.update({"plan": plan})
        await omni.profile.SetTraits(p.SetTraitsRequest(person_id=person, traits=traits, source="crm"))

    async def filled() -> bool:
        count = await omni.segmentation.CountSegmentMembers(
            s.CountSegmentMembersRequest(segment_id=segment.id)
        )
        return count.member_count == MEMBERS

    await eventually(filled, "the segment filling")
    await asyncio.sleep(1.0)  # decisioning hears of the entries

    await omni.gateway.CreateTemplate(
        gateway_pb2.CreateTemplateRequest(
            template=gateway_pb2.Template(
                id=f"news-{plan}",
                variants=[
                    gateway_pb2.TemplateVariant(email=gateway_pb2.EmailVariant(subject="News", text="Hello"))
                ],
            )
        )
    )
    created = await omni.decisioning.CreateJourney(
        d.CreateJourneyRequest(
            journey=d.Journey(
                name=f"campaign {plan}",
                spec=d.JourneySpec(
                    entry=d.JourneyEntry(
                        campaign=d.CampaignEntryTrigger(segment_id=segment.id, per_minute=PER_MINUTE)
                    ),
                    steps=[
                        d.JourneyStep(
                            id="news",
                            message=d.MessageStep(channels=[c.CHANNEL_EMAIL], template_id=f"news-{plan}"),
                        )
                    ],
                ),
            )
        )
    )
    await omni.decisioning.PublishJourney(d.PublishJourneyRequest(journey_id=created.journey.id))

    arrived: dict[str, float] = {}
    deadline = time.monotonic() + 40
    while len(arrived) < MEMBERS and time.monotonic() < deadline:
        for message in smtp_sink.messages():
            to = str(message["To"])
            for email in emails:
                if email in to and email not in arrived:
                    arrived[email] = time.monotonic()
        await asyncio.sleep(0.05)
    assert set(arrived) == set(emails)
    # Four at one a second: the runs' sends three seconds apart from first to last (less the first one's
    # lateness in being taken), and so their arrivals, give or take the delivery's own time.
    sent_at = []
    for person in persons:
        [run] = (
            await omni.decisioning.ListPersonJourneyRuns(d.ListPersonJourneyRunsRequest(person_id=person))
        ).runs
        assert [(step.step_id, step.outcome) for step in run.steps] == [("news", "sent")]
        sent_at.append(run.steps[0].time.ToDatetime().timestamp())
    assert max(sent_at) - min(sent_at) >= 2.0
    assert max(arrived.values()) - min(arrived.values()) >= 1.5
    await asyncio.sleep(1.0)
    assert sum(1 for m in smtp_sink.messages() if any(e in str(m["To"]) for e in emails)) == MEMBERS
