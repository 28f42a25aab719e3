"""Realistic requests per service, the starting points of the mutations, naming things that exist.

Each function creates what its requests refer to (persons, a review, segments, templates, a message …) through
the services' own RPCs, and returns the seed requests by RPC name; a client-streaming RPC's seeds are lists of
messages. Their strings (ids, names, addresses) also feed the generated requests of the service.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from google.protobuf import duration_pb2, field_mask_pb2, struct_pb2, timestamp_pb2

from omni.common.v1 import common_pb2
from omni.decisioning.v1 import decisioning_pb2 as decisioning
from omni.gateway.v1 import gateway_pb2 as gateway
from omni.identity.v1 import identity_pb2 as identity
from omni.identity.v1 import matching_pb2 as matching
from omni.profile.v1 import profile_pb2 as profile
from omni.segmentation.v1 import segmentation_pb2 as segmentation

from ..e2e.conftest import Omni

Seeds = dict[str, list[Any]]


def _unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def _ident(type_: str, value: str) -> common_pb2.Identifier:
    return common_pb2.Identifier(type=type_, value=value)


def _struct(**values: Any) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


def _ago(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=int(time.time()) - seconds)


def _record(tag: str) -> matching.PersonRecord:
    return matching.PersonRecord(
        given_name="Charlotte",
        surname=f"Brown{tag}",
        date_of_birth=matching.CalendarDate(year=1984, month=2, day=29),
        street_number="12a",
        address_1="Stanley St",
        address_2="Unit 4",
        suburb="Kingsford",
        postcode="2032",
        state="NSW",
        identifiers=[_ident("email", f"charlotte.{tag}@example.com")],
    )


async def identity_seeds(omni: Omni) -> Seeds:
    """Persons (one merged into another, one to forget), match decisions and an open review."""
    tag = uuid.uuid4().hex[:8]
    stub = omni.identity

    async def resolve(*identifiers: common_pb2.Identifier) -> str:
        reply = await stub.ResolvePerson(identity.ResolvePersonRequest(identifiers=identifiers, source="web"))
        return reply.resolution.person_id

    ada = await resolve(_ident("email", f"ada.{tag}@example.com"), _ident("device_id", f"dev-{tag}"))
    bea = await resolve(_ident("email", f"bea.{tag}@example.com"))
    cem = await resolve(_ident("loyalty_card", f"LC-{tag}"))
    await stub.MergePersons(
        identity.MergePersonsRequest(
            request_id=_unique("merge-"), survivor_person_id=bea, merged_person_id=cem, reason="same customer"
        )
    )
    dan = await resolve(_ident("phone", "+61 2 9374 4000"), _ident("user_id", f"user-{tag}"))
    page = await stub.ListPersonIdentifiers(identity.ListPersonIdentifiersRequest(person_id=ada, page_size=1))

    record = _record(tag)
    filed = (await omni.matching.MatchRecord(matching.MatchRecordRequest(record=record, source="pos"))).result
    # The same name and postcode and nothing else: close to the record filed, not close enough to link.
    partial = matching.PersonRecord(
        given_name=record.given_name, surname=record.surname, postcode=record.postcode
    )
    review = (
        await omni.matching.MatchRecord(matching.MatchRecordRequest(record=partial, source="pos"))
    ).result
    assert review.decision == matching.MATCH_DECISION_REVIEW, review
    resolve_request = identity.ResolvePersonRequest(
        identifiers=[_ident("email", f"eve.{tag}@example.com"), _ident("anonymous_id", f"anon-{tag}")],
        source="web",
        reference=f"web/evt-{tag}",
    )
    return {
        "ResolvePerson": [
            resolve_request,
            identity.ResolvePersonRequest(
                identifiers=[_ident("phone", "+14155550123"), _ident("push_token", f"tok-{tag}")],
                source="app",
            ),
            identity.ResolvePersonRequest(
                identifiers=[
                    _ident("email", f"ada.{tag}@example.com"),
                    _ident("pos_customer_id", f"pos-{tag}"),
                ],
                source="pos",
            ),
        ],
        "BatchResolvePersons": [
            identity.BatchResolvePersonsRequest(
                requests=[
                    resolve_request,
                    identity.ResolvePersonRequest(identifiers=[_ident("loyalty_card", f"LC-{tag}")]),
                ]
            )
        ],
        "GetPerson": [identity.GetPersonRequest(person_id=ada), identity.GetPersonRequest(person_id=cem)],
        "LookupPerson": [identity.LookupPersonRequest(identifier=_ident("email", f"ada.{tag}@example.com"))],
        "ListPersonMerges": [identity.ListPersonMergesRequest(person_id=bea, page_size=1)],
        "ListPersonIdentifiers": [
            identity.ListPersonIdentifiersRequest(person_id=ada, page_size=1),
            identity.ListPersonIdentifiersRequest(
                person_id=ada, page_size=1, page_token=page.next_page_token
            ),
        ],
        "ListRefusedLinks": [identity.ListRefusedLinksRequest(person_id=ada, page_size=10)],
        "MergePersons": [
            identity.MergePersonsRequest(
                request_id=_unique("merge-"),
                survivor_person_id=ada,
                merged_person_id=dan,
                reason="same person",
            )
        ],
        "UnmergePerson": [
            identity.UnmergePersonRequest(request_id=_unique("unmerge-"), person_id=cem, reason="wrong merge")
        ],
        "ForgetPerson": [
            identity.ForgetPersonRequest(
                request_id=_unique("forget-"),
                person_id=dan,
                requested_by="dpo@example.com",
                reason="GDPR art. 17 request #123",
            )
        ],
        "MatchRecord": [
            matching.MatchRecordRequest(
                record=_record(tag + "x"), source="store_signup", request_id=_unique("m-")
            ),
            matching.MatchRecordRequest(record=partial, source="pos"),
        ],
        "BatchMatchRecords": [
            matching.BatchMatchRecordsRequest(
                records=[_record(tag + "y"), _record(tag + "z")], source="pos", request_id=_unique("bm-")
            )
        ],
        "GetMatchModel": [matching.GetMatchModelRequest()],
        "TrainMatchModel": [matching.TrainMatchModelRequest(request_id=_unique("train-"), max_records=1000)],
        "ListMatchDecisions": [matching.ListMatchDecisionsRequest(person_id=filed.person_id, page_size=2)],
        "SettleMatchReview": [
            matching.SettleMatchReviewRequest(
                decision_id=review.decision_id,
                outcome=matching.MATCH_REVIEW_OUTCOME_LINK,
                person_id=filed.person_id,
                reviewer="ops@example.com",
                reason="same customer, moved house",
                request_id=_unique("settle-"),
            )
        ],
        "ListMatchReviews": [matching.ListMatchReviewsRequest(page_size=1)],
    }


def _events(tag: str, person_id: str) -> list[profile.Event]:
    return [
        profile.Event(
            id=_unique("evt-"),
            type="page_viewed",
            channel=common_pb2.CHANNEL_WEB,
            identifiers=[_ident("anonymous_id", f"anon-{tag}"), _ident("email", f"zoe.{tag}@example.com")],
            occurred_at=_ago(3600),
            properties=_struct(url="https://shop.example.com/boots", title="Boots", price=89.9),
            context=_struct(page={"referrer": "https://news.example.com"}, campaign={"source": "newsletter"}),
            source="web_sdk",
        ),
        profile.Event(
            id=_unique("evt-"),
            type="cart_item_added",
            channel=common_pb2.CHANNEL_APP,
            person_id=person_id,
            cart_item=common_pb2.CartItem(
                product_id="sku-42",
                name="Trail Running Shoes",
                quantity=2,
                unit_price=common_pb2.Money(amount_minor=8990, currency_code="EUR"),
            ),
        ),
        profile.Event(
            id=_unique("evt-"),
            type="order_completed",
            channel=common_pb2.CHANNEL_STORE,
            identifiers=[_ident("loyalty_card", f"LC-{tag}")],
            properties=_struct(order_id=f"o-{tag}", revenue=129.9, currency="EUR"),
            traits=_struct(first_name="Zoe", plan="gold"),
            source="pos_back_office",
        ),
    ]


async def profile_seeds(omni: Omni) -> Seeds:
    """A person with events, traits, consent and a computed trait."""
    tag = uuid.uuid4().hex[:8]
    stub = omni.profile
    first = profile.Event(
        id=_unique("evt-"),
        type="signed_up",
        channel=common_pb2.CHANNEL_WEB,
        identifiers=[_ident("email", f"zoe.{tag}@example.com"), _ident("anonymous_id", f"anon-{tag}")],
    )
    person_id = (await stub.TrackEvent(profile.TrackEventRequest(event=first))).person_id
    traits = profile.SetTraitsRequest(
        person_id=person_id,
        traits=_struct(first_name="Zoe", email=f"zoe.{tag}@example.com", vip=True, birthday="1990-01-31"),
        source="crm",
    )
    await stub.SetTraits(traits)
    consent = profile.SetConsentRequest(
        person_id=person_id,
        consent=profile.Consent(
            channel=common_pb2.CHANNEL_EMAIL,
            state=profile.CONSENT_STATE_GRANTED,
            source="app_signup",
            purpose=profile.CONSENT_PURPOSE_MARKETING,
            double_opt_in=profile.DOUBLE_OPT_IN_STATE_PENDING_CONFIRMATION,
        ),
    )
    await stub.SetConsent(consent)
    events = _events(tag, person_id)
    await stub.BatchTrackEvents(profile.BatchTrackEventsRequest(events=events))
    timeline = await stub.ListTimeline(profile.ListTimelineRequest(person_id=person_id, page_size=1))
    computed = profile.ComputedTrait(
        name=f"orders_{tag}",
        kind=profile.COMPUTED_TRAIT_KIND_COUNT,
        event_type="order_completed",
        window_days=30,
    )
    await stub.CreateComputedTrait(profile.CreateComputedTraitRequest(computed_trait=computed))
    return {
        "TrackEvent": [profile.TrackEventRequest(event=e) for e in events],
        "BatchTrackEvents": [profile.BatchTrackEventsRequest(events=events)],
        "StreamTrackEvents": [
            [profile.StreamTrackEventsRequest(events=events[:2])],
            [
                profile.StreamTrackEventsRequest(events=events[:1]),
                profile.StreamTrackEventsRequest(events=events[2:]),
            ],
        ],
        "SetTraits": [traits],
        "SetConsent": [
            consent,
            profile.SetConsentRequest(
                person_id=person_id,
                consent=profile.Consent(
                    channel=common_pb2.CHANNEL_SMS,
                    state=profile.CONSENT_STATE_DENIED,
                    source="call_center",
                    purpose=profile.CONSENT_PURPOSE_TRANSACTIONAL,
                ),
            ),
        ],
        "GetProfile": [profile.GetProfileRequest(person_id=person_id, recent_event_count=5)],
        "ListTimeline": [
            profile.ListTimelineRequest(person_id=person_id, page_size=1),
            profile.ListTimelineRequest(
                person_id=person_id, page_size=1, page_token=timeline.next_page_token
            ),
        ],
        "ListTraitHistory": [profile.ListTraitHistoryRequest(person_id=person_id, trait_name="first_name")],
        "ListConsentHistory": [profile.ListConsentHistoryRequest(person_id=person_id, page_size=2)],
        "CreateComputedTrait": [
            profile.CreateComputedTraitRequest(
                computed_trait=profile.ComputedTrait(
                    name=f"spend_{tag}",
                    kind=profile.COMPUTED_TRAIT_KIND_SUM,
                    event_type="order_completed",
                    property="revenue",
                    channels=[common_pb2.CHANNEL_WEB, common_pb2.CHANNEL_STORE],
                    description="What the customer spent",
                )
            ),
            profile.CreateComputedTraitRequest(
                computed_trait=profile.ComputedTrait(
                    name=f"ltv_{tag}",
                    kind=profile.COMPUTED_TRAIT_KIND_LIFETIME_VALUE,
                    event_type="order_completed",
                    currency_code="EUR",
                )
            ),
            profile.CreateComputedTraitRequest(
                computed_trait=profile.ComputedTrait(
                    name=f"last_{tag}", kind=profile.COMPUTED_TRAIT_KIND_LAST_OCCURRENCE, per_channel=True
                )
            ),
        ],
        "ListComputedTraits": [profile.ListComputedTraitsRequest(page_size=1)],
    }


def _seconds(value: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=value)


async def segmentation_seeds(omni: Omni) -> Seeds:
    """A segment, and definitions using every kind of condition."""
    tag = uuid.uuid4().hex[:8]
    vip = segmentation.Condition(
        trait=segmentation.TraitCondition(
            trait="vip", comparison=segmentation.COMPARISON_EQ, value=struct_pb2.Value(bool_value=True)
        )
    )
    abandoned = segmentation.Condition(
        all=segmentation.ConditionList(
            conditions=[
                segmentation.Condition(
                    cart=segmentation.CartCondition(comparison=segmentation.COMPARISON_GT, item_count=0)
                ),
                segmentation.Condition(
                    event_count=segmentation.EventCountCondition(
                        event_type="order_completed",
                        window=_seconds(3600),
                        comparison=segmentation.COMPARISON_EQ,
                        count=0,
                    )
                ),
                segmentation.Condition(
                    since_last_event=segmentation.SinceLastEventCondition(
                        event_type="cart_item_added", at_least=_seconds(1800)
                    )
                ),
            ]
        )
    )
    either = segmentation.Condition(
        any=segmentation.ConditionList(
            conditions=[
                vip,
                segmentation.Condition(
                    trait=segmentation.TraitCondition(
                        trait="address.city",
                        comparison=segmentation.COMPARISON_GTE,
                        value=struct_pb2.Value(string_value="Berlin"),
                    )
                ),
                segmentation.Condition(**{"not": vip}),
            ]
        )
    )
    created = await omni.segmentation.CreateSegment(
        segmentation.CreateSegmentRequest(
            segment=segmentation.Segment(name=f"vip-{tag}", description="Our best customers", condition=vip)
        )
    )
    segment_id = created.segment.id
    listed = await omni.segmentation.ListSegments(segmentation.ListSegmentsRequest(page_size=1))
    return {
        "CreateSegment": [
            segmentation.CreateSegmentRequest(
                segment=segmentation.Segment(name=f"{name}-{tag}", description="Who to win back", condition=c)
            )
            for name, c in (("abandoned-cart", abandoned), ("vip-or-berlin", either))
        ],
        "GetSegment": [segmentation.GetSegmentRequest(segment_id=segment_id)],
        "ListSegments": [
            segmentation.ListSegmentsRequest(page_size=1),
            segmentation.ListSegmentsRequest(page_size=1, page_token=listed.next_page_token),
        ],
        "ListPersonSegments": [segmentation.ListPersonSegmentsRequest(person_id=str(uuid.uuid4()))],
    }


async def decisioning_seeds(omni: Omni) -> Seeds:
    """An offer and a journey (on a segment in segmentation and templates in the gateway); decide for a person
    at a touchpoint."""
    tag = uuid.uuid4().hex[:8]
    segment = await omni.segmentation.CreateSegment(
        segmentation.CreateSegmentRequest(
            segment=segmentation.Segment(
                name=f"vip-{tag}",
                condition=segmentation.Condition(
                    trait=segmentation.TraitCondition(trait="vip", comparison=segmentation.COMPARISON_EXISTS)
                ),
            )
        )
    )
    segment_id = segment.segment.id
    for template_id in (f"welcome-{tag}", f"cart-{tag}"):
        await omni.gateway.CreateTemplate(
            gateway.CreateTemplateRequest(
                template=gateway.Template(
                    id=template_id, channel=common_pb2.CHANNEL_EMAIL, subject="Hello", body_text="Hello there"
                )
            )
        )
    offer = decisioning.Offer(
        name=f"boots-10-{tag}",
        description="10% off trail running shoes",
        touchpoints=["web_home", "pos_checkout"],
        priority=5,
    )
    created = (await omni.decisioning.CreateOffer(decisioning.CreateOfferRequest(offer=offer))).offer
    journey = decisioning.Journey(
        name=f"welcome-{tag}",
        trigger_segment_id=segment_id,
        channels=[common_pb2.CHANNEL_EMAIL, common_pb2.CHANNEL_SMS],
        template_id=f"welcome-{tag}",
    )
    await omni.decisioning.CreateJourney(decisioning.CreateJourneyRequest(journey=journey))
    listed = await omni.decisioning.ListJourneys(decisioning.ListJourneysRequest(page_size=1))
    other_offer = decisioning.Offer(
        name=f"vip-lounge-{tag}", description="Lounge access", segment_id=segment_id, priority=-3
    )
    other_journey = decisioning.Journey(
        name=f"cart-{tag}",
        trigger_segment_id=segment_id,
        channels=[common_pb2.CHANNEL_EMAIL],
        template_id=f"cart-{tag}",
    )
    return {
        "CreateJourney": [
            decisioning.CreateJourneyRequest(journey=other_journey),
            decisioning.CreateJourneyRequest(journey=journey),
        ],
        "ListJourneys": [
            decisioning.ListJourneysRequest(page_size=1),
            decisioning.ListJourneysRequest(page_size=1, page_token=listed.next_page_token),
        ],
        "CreateOffer": [
            decisioning.CreateOfferRequest(offer=other_offer),
            decisioning.CreateOfferRequest(offer=offer),
        ],
        "GetOffer": [
            decisioning.GetOfferRequest(offer_id=created.id),
            decisioning.GetOfferRequest(offer_id=created.id, version=1),
        ],
        "ListOffers": [decisioning.ListOffersRequest(page_size=1, show_archived=True)],
        "UpdateOffer": [
            decisioning.UpdateOfferRequest(
                offer=decisioning.Offer(id=created.id, priority=7, group="footwear"),
                update_mask=field_mask_pb2.FieldMask(paths=["priority", "group"]),
            ),
            decisioning.UpdateOfferRequest(offer=created, expected_version=1, request_id=f"u-{tag}"),
        ],
        "ArchiveOffer": [decisioning.ArchiveOfferRequest(offer_id=created.id, request_id=f"a-{tag}")],
        "Decide": [
            decisioning.DecideRequest(
                person_id=str(uuid.uuid4()),
                touchpoint="web_home",
                channel=common_pb2.CHANNEL_WEB,
                context=_struct(store_id="s-1", basket={"items": 2, "skus": ["sku-42"]}),
                limit=3,
            )
        ],
    }


async def gateway_seeds(omni: Omni) -> Seeds:
    """A person with an email address and marketing consent, a template and a message sent to them."""
    tag = uuid.uuid4().hex[:8]
    email = f"mia.{tag}@example.com"
    resolved = await omni.identity.ResolvePerson(
        identity.ResolvePersonRequest(identifiers=[_ident("email", email)], source="web")
    )
    person_id = resolved.resolution.person_id
    await omni.profile.SetConsent(
        profile.SetConsentRequest(
            person_id=person_id,
            consent=profile.Consent(
                channel=common_pb2.CHANNEL_EMAIL, state=profile.CONSENT_STATE_GRANTED, source="web_signup"
            ),
        )
    )
    template = gateway.Template(
        id=f"cart-{tag}",
        channel=common_pb2.CHANNEL_EMAIL,
        subject="{{ traits.first_name | default: 'Hi' }}, your cart is waiting",
        body_text="{% for item in cart.items %}- {{ item.quantity }} x {{ item.name }}\n{% endfor %}{{ variables.code }}",
        body_html="<ul>{% for item in cart.items %}<li>{{ item.name }}</li>{% endfor %}</ul>",
    )
    await omni.gateway.CreateTemplate(gateway.CreateTemplateRequest(template=template))
    send = gateway.SendMessageRequest(
        request_id=_unique("send-"),
        person_id=person_id,
        channel=common_pb2.CHANNEL_EMAIL,
        template_id=template.id,
        variables=_struct(code="WELCOME10", items=[1, 2]),
        purpose=profile.CONSENT_PURPOSE_MARKETING,
    )
    sent = await omni.gateway.SendMessage(send)
    variants = [
        gateway.TemplateVariant(
            email=gateway.EmailVariant(subject="Hi {{ traits.first_name }}", text="Hello")
        ),
        gateway.TemplateVariant(
            locale="de", email=gateway.EmailVariant(subject="Hallo", html="<p>Hallo</p>")
        ),
        gateway.TemplateVariant(sms=gateway.SmsVariant(text="Code {{ variables.code }}")),
        gateway.TemplateVariant(push=gateway.PushVariant(title="Hi", body="{{ cart.item_count }}")),
        gateway.TemplateVariant(terminal=gateway.TerminalVariant(text="Coupon {{ variables.code }}")),
        gateway.TemplateVariant(webhook=gateway.WebhookVariant(body='{"code": {{ variables.code | json }}}')),
    ]
    await omni.gateway.CreateTemplate(
        gateway.CreateTemplateRequest(template=gateway.Template(id=f"multi-{tag}", variants=variants))
    )
    listed = await omni.gateway.ListTemplates(gateway.ListTemplatesRequest(page_size=1))
    other = gateway.Template(
        id=f"receipt-{tag}",
        channel=common_pb2.CHANNEL_EMAIL,
        subject="Your receipt",
        body_text="Thanks {{ person_id }}",
    )
    return {
        "CreateTemplate": [gateway.CreateTemplateRequest(template=other)],
        "GetTemplate": [
            gateway.GetTemplateRequest(template_id=template.id),
            gateway.GetTemplateRequest(template_id=template.id, version=1),
        ],
        "UpdateTemplate": [
            gateway.UpdateTemplateRequest(
                template=gateway.Template(id=template.id, subject="{{ traits.first_name }}, still there?"),
                update_mask=field_mask_pb2.FieldMask(paths=["subject"]),
                request_id=_unique("upd-"),
            ),
            gateway.UpdateTemplateRequest(template=gateway.Template(id=template.id, variants=variants)),
        ],
        "ListTemplates": [
            gateway.ListTemplatesRequest(page_size=1),
            gateway.ListTemplatesRequest(page_size=1, page_token=listed.next_page_token, show_archived=True),
        ],
        "ArchiveTemplate": [gateway.ArchiveTemplateRequest(template_id=f"multi-{tag}")],
        "RenderPreview": [
            gateway.RenderPreviewRequest(
                template_id=template.id,
                person_id=person_id,
                variables=_struct(code="WELCOME10"),
                locale="de-AT",
            ),
            gateway.RenderPreviewRequest(
                template_id=template.id, channel=common_pb2.CHANNEL_EMAIL, traits=_struct(first_name="Mia")
            ),
        ],
        "SendMessage": [
            send,
            gateway.SendMessageRequest(
                request_id=_unique("send-"),
                person_id=person_id,
                channel=common_pb2.CHANNEL_EMAIL,
                template_id=template.id,
                journey_id=str(uuid.uuid4()),
                purpose=profile.CONSENT_PURPOSE_TRANSACTIONAL,
            ),
        ],
        "GetMessage": [gateway.GetMessageRequest(message_id=sent.message.id)],
    }
