"""Segments, identity review, journeys and the served assets, against the real services."""

from __future__ import annotations

import json
import re
import uuid

from examples.retailer import SEGMENTS
from omni.common.v1 import common_pb2
from omni.identity.v1 import identity_pb2, matching_pb2
from omni.profile.v1 import profile_pb2
from omni.segmentation.v1 import segmentation_pb2
from tests.console.conftest import Console, Stack, eventually


async def member_count(stack: Stack, name: str) -> int:
    request = segmentation_pb2.CountSegmentMembersRequest(segment_id=stack.loaded.segments[name])
    return int((await stack.omni.segmentation.CountSegmentMembers(request)).member_count)


async def test_segments_list_their_sizes(stack: Stack, console: Console) -> None:
    html = (await console.http.get("/segments")).text
    for name in SEGMENTS:
        assert name in html
    count = await member_count(stack, "store-shoppers")
    row = re.search(r"store-shoppers</a></td><td>[^<]*</td>\s*<td class=\"num\">([\d,]+)</td>", html)
    assert row and int(row.group(1).replace(",", "")) == count


async def test_a_segment_page_has_its_size_chart_rule_and_export(stack: Stack, console: Console) -> None:
    segment_id = stack.loaded.segments["store-shoppers"]

    async def charted() -> str | None:
        html = (await console.http.get(f"/segments/{segment_id}")).text
        return html if "data-spec" in html else None

    html = await eventually(charted, "a size-over-time chart")
    spec = re.search(r'data-spec="([^"]+)"', html)
    assert spec
    parsed = json.loads(spec.group(1).replace("&#34;", '"').replace("&quot;", '"').replace("&amp;", "&"))
    assert parsed["mark"]["type"] == "line" and parsed["data"]["values"]
    assert "eventCount" in html, "the rule"
    export = await console.http.get(f"/segments/{segment_id}/members.csv")
    assert export.status_code == 200 and export.headers["content-type"].startswith("text/csv")
    lines = export.text.strip().splitlines()
    assert lines[0] == "person_id" and len(lines) - 1 == await member_count(stack, "store-shoppers")


async def test_the_rule_editor_previews_count_and_sample(stack: Stack, console: Console) -> None:
    editor = await console.http.get("/segments/new")
    assert editor.status_code == 200 and 'hx-post="/segments/preview"' in editor.text
    rule = json.dumps(
        {
            "eventCount": {
                "eventType": "order_completed",
                "window": "2592000s",
                "comparison": "COMPARISON_GTE",
                "count": 1,
                "channels": ["CHANNEL_STORE"],
            }
        }
    )
    preview = await console.http.post("/segments/preview", data={"rule": rule})
    count = re.search(r'id="preview-count">([\d,]+)<', preview.text)
    assert count and int(count.group(1)) == await member_count(stack, "store-shoppers")
    assert len(re.findall(r'href="/persons/[0-9a-f-]{36}"', preview.text)) == min(10, int(count.group(1)))


async def test_a_bad_rule_gets_the_services_field_violations(console: Console) -> None:
    not_json = await console.http.post("/segments/preview", data={"rule": "{"})
    assert "not a rule" in not_json.text
    invalid = await console.http.post(
        "/segments/preview", data={"rule": json.dumps({"eventCount": {"eventType": "x", "count": 1}})}
    )
    assert "INVALID_ARGUMENT" in invalid.text and "<code>" in invalid.text


async def test_explain_says_why_a_person_is_in(stack: Stack, console: Console) -> None:
    segment_id = stack.loaded.segments["store-shoppers"]
    member = (
        await stack.omni.segmentation.ListSegmentMembers(
            segmentation_pb2.ListSegmentMembersRequest(segment_id=segment_id, page_size=1)
        )
    ).members[0]
    answer = await console.http.get(f"/segments/{segment_id}/explain", params={"q": member.person_id})
    assert "A member" in answer.text and "holds" in answer.text
    nobody = await console.http.get(f"/segments/{segment_id}/explain", params={"q": "nobody@example.com"})
    assert "nobody holds" in nobody.text


async def test_settling_a_review_files_the_record(stack: Stack, console: Console) -> None:
    decision_id = stack.loaded.review_decision_id
    assert decision_id, "the data set leaves a record for review"
    html = (await console.http.get("/reviews")).text
    assert f'action="/reviews/{decision_id}/settle"' in html
    assert html.count("hamilton11") >= 2, "the record and the candidate side by side"
    assert re.search(r'class="weight (for|against)">[^<]+, [+-]\d', html), "comparison weights"
    form = html[html.index(f'action="/reviews/{decision_id}/settle"') :]
    request_id = re.search(r'name="request_id" value="([^"]+)"', form)
    choice = re.search(r'name="choice" value="(link:[0-9a-f-]+)"', form)
    assert request_id and choice
    fields = {
        "request_id": request_id.group(1),
        "choice": choice.group(1),
        "reviewer": "Grace",
        "reason": "same card",
    }
    settled = await console.http.post(f"/reviews/{decision_id}/settle", data=fields)
    assert settled.status_code == 303 and "Settled" in settled.headers["location"]
    again = await console.http.post(f"/reviews/{decision_id}/settle", data=fields)
    assert "Settled" in again.headers["location"], "the same request id answers the first answer"
    assert f"/reviews/{decision_id}/settle" not in (await console.http.get("/reviews")).text
    person_id = choice.group(1).removeprefix("link:")
    decisions = await stack.omni.matching.ListMatchDecisions(
        matching_pb2.ListMatchDecisionsRequest(person_id=person_id)
    )
    review = next(d for d in decisions.decisions if d.id == decision_id)
    assert review.settlement.reviewer == "Grace"


async def test_a_merge_can_be_undone_from_the_persons_page(stack: Stack, console: Console) -> None:
    first, second = f"m1.{uuid.uuid4().hex[:8]}@example.com", f"m2.{uuid.uuid4().hex[:8]}@example.com"
    for email in (first, second):
        await stack.omni.identity.ResolvePerson(
            identity_pb2.ResolvePersonRequest(identifiers=[common_pb2.Identifier(type="email", value=email)])
        )
    both = await stack.omni.identity.ResolvePerson(
        identity_pb2.ResolvePersonRequest(
            identifiers=[common_pb2.Identifier(type="email", value=e) for e in (first, second)]
        )
    )
    survivor, merged = both.resolution.person_id, both.resolution.merged_person_ids[0]
    html = (await console.http.get(f"/persons/{survivor}")).text
    assert f'name="merged_person_id" value="{merged}"' in html
    request_id = re.search(r'name="request_id" value="([^"]+)"', html)
    assert request_id
    undone = await console.http.post(
        f"/persons/{survivor}/unmerge",
        data={"merged_person_id": merged, "reason": "two people", "request_id": request_id.group(1)},
    )
    assert undone.status_code == 303 and "Unmerged" in undone.headers["location"]
    assert "undone" in (await console.http.get(f"/persons/{survivor}")).text
    lookup = await stack.omni.identity.LookupPerson(
        identity_pb2.LookupPersonRequest(identifier=common_pb2.Identifier(type="email", value=second))
    )
    assert lookup.person.id != survivor


async def test_a_cross_site_post_is_refused(stack: Stack, console: Console) -> None:
    refused = await console.http.post(
        f"/reviews/{uuid.uuid4()}/settle", data={"choice": "new:"}, headers={"origin": "https://evil.example"}
    )
    assert refused.status_code == 403


async def test_journeys_list_and_steps(stack: Stack, console: Console) -> None:
    listing = (await console.http.get("/journeys")).text
    assert "store-shopper-thanks" in listing
    page = await console.http.get(f"/journeys/{stack.loaded.journey_id}")
    assert page.status_code == 200
    assert "Enters segment store-shoppers" in page.text and "Send template store-thanks-email" in page.text
    count = await member_count(stack, "store-shoppers")
    assert f"{count:,} persons" in page.text
    assert (await console.http.get(f"/journeys/{uuid.uuid4()}")).status_code == 404


async def test_the_scripts_are_served_from_the_npm_packages(console: Console) -> None:
    for name in ("htmx.min.js", "vega.min.js", "vega-lite.min.js", "vega-embed.min.js"):
        answer = await console.http.get(f"/vendor/{name}")
        assert answer.status_code == 200 and len(answer.content) > 10_000, name
    assert (await console.http.get("/vendor/../package.json")).status_code == 404
    assert (await console.http.get("/static/console.css")).status_code == 200


async def test_consent_history_is_on_the_persons_page(stack: Stack, console: Console) -> None:
    customer = stack.loaded.customers[0]
    lookup = await stack.omni.identity.LookupPerson(
        identity_pb2.LookupPersonRequest(identifier=common_pb2.Identifier(type="email", value=customer.email))
    )
    person_id = lookup.person.id
    await stack.omni.profile.SetConsent(
        profile_pb2.SetConsentRequest(
            person_id=person_id,
            consent=profile_pb2.Consent(
                channel=common_pb2.CHANNEL_SMS,
                state=profile_pb2.CONSENT_STATE_DENIED,
                purpose=profile_pb2.CONSENT_PURPOSE_MARKETING,
                source="call-centre",
            ),
            request_id=f"c-{uuid.uuid4()}",
        )
    )

    async def shown() -> str | None:
        html = (await console.http.get(f"/persons/{person_id}")).text
        return html if "call-centre" in html else None

    html = await eventually(shown, "the consent answer in the history")
    assert "channel-sms" in html and "denied" in html
